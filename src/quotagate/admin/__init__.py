"""The admin API: its own listener, its own credential, an audit log of every change."""
