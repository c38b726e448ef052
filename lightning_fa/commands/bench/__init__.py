"""`lightning-fa bench`: the harness (registry, timing, machine information, peak memory, the
command) and the benchmarks, one module per job."""
