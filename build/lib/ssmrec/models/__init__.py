"""Models: thin compositions of ``ssmrec.nn`` blocks (ctr: click-through-rate models)."""
