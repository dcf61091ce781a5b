"""Run TensorZero's gateway as a standalone process for bench/run.py.

The ``tensorzero`` wheel has no separate gateway binary: the Rust gateway is
compiled into ``tensorzero.abi3.so`` and ``_start_http_gateway`` starts it on
a tokio runtime inside this Python process, bound to a random 127.0.0.1 port
(``[gateway] bind_address`` is ignored in this mode).  This script starts it,
prints ``ready <base_url>`` so the harness learns the port, and then just
keeps the process alive; all request work happens on the Rust threads.

Run it with the python of the separate tensorzero venv::

    /work/bench-venvs/tensorzero/bin/python bench/peers/tensorzero_gateway.py CONFIG.toml
"""

import sys
import threading

import tensorzero


def main() -> None:
    gateway = tensorzero._start_http_gateway(
        config_file=sys.argv[1],
        clickhouse_url=None,
        postgres_url=None,
        valkey_url=None,
        async_setup=False,
    )
    print(f"ready {gateway.base_url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
