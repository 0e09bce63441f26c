"""The daemon on the MQTT broker: the link every MQTT user shares, and the assistant's own face there."""
