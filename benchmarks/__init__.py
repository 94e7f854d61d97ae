"""Fig's benchmarks: Fig and its peers on the same data, same machine, same run."""
