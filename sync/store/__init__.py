"""The only code that speaks SQL: the schema, its migrations, and one adapter per table."""
