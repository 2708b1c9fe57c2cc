"""Where qfleet runs: `cli/` (the command line), `plan.py` (the sizes derived from a config),
`components.py` (each component's body), `launcher.py` with `local/` (processes on this
machine) and `ray/` (Ray actors), `bench/` (benchmarks), and the cluster configs for `ray up`.
Component classes live in the other folders; this one only places, wires and supervises them."""
