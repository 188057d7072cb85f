"""Online serving: incremental scorers (:mod:`ssmrec.serve.scorers`), the memory-bounded user-state
cache (:mod:`ssmrec.serve.cache`), the micro-batching engine (:mod:`ssmrec.serve.engine`) and the
HTTP service (:mod:`ssmrec.serve.app`, ``ssmrec serve``)."""
