"""`qfleet bench ...`: benchmarks that run the real components and write JSON and a table."""
