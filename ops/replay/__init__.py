"""The ops replay tool (`ecgscreen replay`): backfill, shadow and audit over historical ECGs."""
