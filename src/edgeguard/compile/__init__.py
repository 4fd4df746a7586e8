"""Sparse inference compiler: turn a pruned model into generated code that is really faster."""
