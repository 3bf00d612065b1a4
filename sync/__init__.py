"""Worker side of partnero-sync: settings, inbox, queue, jobs; later mappings, sinks, ledger."""
