"""What an operator sees: logs, metrics, progress, and the read models behind status, /ops and trace."""
