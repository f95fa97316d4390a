from qpu_broker.cli.main import entry

entry()
