"""Prometheus recording and alerting rules of Precondition Watch, and the code that builds them."""
