"""Showrunner's bundled OpenAI-compatible server: the offline default provider and the test
double that referees rate limits. See docs/local-server.md."""
