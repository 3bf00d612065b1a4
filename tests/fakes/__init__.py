"""Stand-ins for outside services, used by the tests."""
