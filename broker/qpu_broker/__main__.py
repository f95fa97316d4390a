from qpu_broker.cli.entry import entry

entry()
