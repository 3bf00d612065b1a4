"""gunicorn's settings and worker class, and the request framing in front of Flask. Imports the
settings, logs and errors of sync, and ``app`` only to check the configuration at start."""
