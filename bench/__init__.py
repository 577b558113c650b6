"""Fork tooling: load, faults and benchmarks for the demo, chaos runs and make bench."""
