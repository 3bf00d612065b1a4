"""What RQ runs: the jobs, the queues they go on, the worker process."""
