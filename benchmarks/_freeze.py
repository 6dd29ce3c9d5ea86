"""Imported last by the benchmark forkserver (benchmarks/runner.py): after the heavy imports,
move every object to the permanent generation, so that gc.collect() in each forked measuring
process does not walk - and copy-on-write - the whole of torch and torch_geometric
(~0.4 s per job otherwise)."""
import gc

gc.collect()
gc.freeze()
