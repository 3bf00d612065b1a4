"""gunicorn settings for the web process (``--config python:app.gunicorn_config``).

Threads let concurrent requests share one inbox commit (see ``sync.intake``); the numbers were
chosen by measurement (bench/README.md). WEB_CONCURRENCY, gunicorn's own variable, sets the
number of processes.
"""

worker_class = "gthread"
threads = 16
# Partnero waits five seconds for an answer; a request still running after 30 s is stuck.
timeout = 30
graceful_timeout = 25
keepalive = 5
accesslog = None
