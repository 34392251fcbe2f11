"""Switchboard operator: turns PlatformConnections into gateway Deployments."""
