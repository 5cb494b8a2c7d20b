"""Local CAs on loopback (step-ca, Pebble) for the tests and the local stack."""
