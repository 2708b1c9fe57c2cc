"""Where qfleet runs: the command line, the local launcher and supervisor, the Ray backend,
benchmarks, and the cluster configs for `ray up`. Component classes live in the other
folders; this one only places, wires and supervises them."""
