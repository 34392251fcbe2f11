"""Test kit: a real control plane on loopback, a local node, and protocol-faithful fakes."""
