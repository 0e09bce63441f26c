"""Tests use the package's own private-broker runner."""

from daemon.sim.broker import Broker, free_port, running_broker

__all__ = ["Broker", "free_port", "running_broker"]
