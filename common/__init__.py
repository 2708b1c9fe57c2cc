"""What every qfleet part shares: config, wire codec and schemas, sockets, networks, envs."""
