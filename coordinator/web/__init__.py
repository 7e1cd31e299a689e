"""The dashboard on the coordinator's HTTP port: pages, live events, previews, actions.

:func:`fractalq.coordinator.http.make_app` mounts each module's routes; the
logic behind them (sessions, snapshots, previews, form checks) lives in plain
classes and functions that the tests use without a network.
"""
