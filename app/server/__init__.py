"""gunicorn's settings and worker class, and the request framing in front of Flask."""
