"""An application writing to an SQLite database, run as its own process by the tests.

Usage: writer.py DB COMMAND [ARGS]
  init PAGE_SIZE          create the database in WAL mode with the test schema
  step N                  run workload step N (deterministic; see STEPS)
  steps A B               run steps A..B-1 with a short pause between them
  randomfill MIB          append MIB rows of 1 MiB random (incompressible) blobs
  bigfill ROWS            append ROWS rows of 1 MiB compressible blobs (20 per transaction)
  checkpoint-truncate     PRAGMA wal_checkpoint(TRUNCATE), as an application might
  commit-and-die          commit one row, then exit without closing (the row stays in the WAL)
  steady SECONDS          a steady writer: one 16 KiB row every 50 ms (about 320 KB/s) for SECONDS
"""
import os
import sqlite3
import sys
import time


def connect(path):
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def init(conn, page_size):
    conn.execute(f"PRAGMA page_size = {int(page_size)}")
    assert conn.execute("PRAGMA journal_mode = wal").fetchone()[0] == "wal"
    conn.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, body TEXT)")
    conn.execute("CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, data BLOB)")
    conn.execute("CREATE INDEX IF NOT EXISTS items_name ON items(name)")


def text(i, n):
    return (f"row-{i}-" * (n // 8 + 1))[:n]


def step(conn, n):
    """Each step is one kind of change; together they cover what the tests need."""
    kind = n % 8
    if kind in (0, 4):  # small inserts, ten per transaction
        for t in range(5):
            conn.execute("BEGIN")
            for k in range(10):
                i = n * 1000 + t * 10 + k
                conn.execute("INSERT INTO items (name, qty, body) VALUES (?, ?, ?)", (f"n{i}", i, text(i, 50 + i % 400)))
            conn.execute("COMMIT")
    elif kind == 1:  # updates
        conn.execute("UPDATE items SET qty = qty * 3 + ?, body = body || 'u' WHERE id % 4 = ?", (n, n % 4))
    elif kind == 2:  # deletes
        conn.execute("DELETE FROM items WHERE id % 7 = ?", (n % 7,))
    elif kind == 3:  # a large blob (overflow pages)
        conn.execute("INSERT INTO blobs (data) VALUES (?)", (bytes((j * 7 + n) % 251 for j in range(2_000_000)),))
    elif kind == 5:  # one transaction spanning many pages
        conn.execute("BEGIN")
        for k in range(3000):
            i = n * 100000 + k
            conn.execute("INSERT INTO items (name, qty, body) VALUES (?, ?, ?)", (f"big{i}", k, text(i, 200)))
        conn.execute("COMMIT")
    elif kind == 6:  # shrink: delete most data, then VACUUM
        conn.execute("DELETE FROM blobs")
        conn.execute("DELETE FROM items WHERE id % 5 != 0")
        conn.execute("VACUUM")
    else:  # mixed small transaction
        conn.execute("BEGIN")
        conn.execute("INSERT INTO items (name, qty, body) VALUES (?, ?, ?)", (f"m{n}", n, text(n, 3000)))
        conn.execute("UPDATE items SET name = name || '*' WHERE id = (SELECT max(id) FROM items)")
        conn.execute("COMMIT")


def bigfill(conn, rows):
    start = conn.execute("SELECT coalesce(max(id), 0) FROM blobs").fetchone()[0]
    for base in range(start, start + rows, 20):
        conn.execute("BEGIN")
        for i in range(base, min(base + 20, start + rows)):
            conn.execute("INSERT INTO blobs (id, data) VALUES (?, ?)", (i + 1, (b"%010d|" % i) * 95325 + b"x" * 326))
        conn.execute("COMMIT")


def main():
    path, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    conn = connect(path)
    if cmd == "init":
        init(conn, args[0])
    elif cmd == "step":
        step(conn, int(args[0]))
    elif cmd == "steps":
        for n in range(int(args[0]), int(args[1])):
            step(conn, n)
            time.sleep(0.05)
    elif cmd == "bigfill":
        bigfill(conn, int(args[0]))
    elif cmd == "randomfill":
        for i in range(int(args[0])):
            conn.execute("INSERT INTO blobs (data) VALUES (?)", (os.urandom(1 << 20),))
    elif cmd == "steady":
        end = time.time() + float(args[0])
        while time.time() < end:
            conn.execute("INSERT INTO blobs (data) VALUES (?)", (os.urandom(16 << 10),))
            time.sleep(0.05)
    elif cmd == "commit-and-die":
        # A committed row left in the WAL: the process ends without closing the
        # connection, so SQLite never checkpoints it into the database file.
        conn.execute("INSERT INTO items (name, qty, body) VALUES ('left in the wal', 1, 'x')")
        os._exit(0)
    elif cmd == "checkpoint-truncate":
        print(conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
    else:
        sys.exit(f"unknown command {cmd}")
    conn.close()


if __name__ == "__main__":
    main()
