"""A local, strict stand-in for the Gemini Live service, and the private MQTT broker that goes with it.

The real service cannot be reached from tests or from a Pi on the bench, and a mock inside the SDK would test
nothing that matters: the wire format, TLS, close codes and the timing of frames are where clients break. So the
real google-genai SDK talks to this over TLS on loopback while a scenario plays the model's part, and every
deviation from the protocol is recorded so a test can fail on it.

This is test and demo equipment: the daemon never imports it. Only `livehome simulate`, `livehome demo`, the
tests and the benchmarks do.
"""
