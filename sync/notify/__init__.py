"""Messages to people: posting to incoming webhooks (Slack, Microsoft Teams, Mattermost, any JSON endpoint)."""
