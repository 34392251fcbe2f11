"""Switchboard gateway: one platform connection, reported honestly into its CR status."""
