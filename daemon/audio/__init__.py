"""Microphone in, loudspeaker out: frames and rates, sound devices, inputs, outputs, earcons, speech."""
