"""The pure business rules: newest state wins, commissions, drift, Partnero's lists."""
