"""Helpers the test suite uses to bring up real Postgres, Redis and a Kafka mock broker."""
