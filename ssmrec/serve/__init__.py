"""Online serving: the generic adapter around a model's incremental contract (:mod:`ssmrec.serve.adapter`;
the contract itself is :mod:`ssmrec.models.incremental`), the memory-bounded user-state cache
(:mod:`ssmrec.serve.cache`), the micro-batching engine (:mod:`ssmrec.serve.engine`), the HTTP service
(:mod:`ssmrec.serve.app`, ``ssmrec serve``) and ``ssmrec export`` (:mod:`ssmrec.serve.export`)."""
