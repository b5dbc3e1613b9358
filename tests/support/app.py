"""An application that keeps one SQLite connection open, driven line by line from stdin.

The crash-safety tests script interleavings with it: the application writes,
checkpoints and restarts the WAL while the replicator is stopped, exactly as a real
application holding its connection would. Every command answers one line on stdout
("ok ..." or "error ...") once it has finished.

Usage: app.py DB PAGE_SIZE
Commands:
  insert TAG N        N transactions, each appending one row to `ledger`
  blob BYTES          one transaction inserting a blob of BYTES bytes (overflow pages)
  delete-blobs        delete every blob
  checkpoint MODE     PRAGMA wal_checkpoint(MODE); answers "ok busy log checkpointed"
  vacuum              VACUUM
  reopen              close the connection (the last one removes the WAL) and open it again
  cold                create table `cold` with one row (a page nobody writes again);
                      answers "ok ROOTPAGE"
  count               answers "ok N" with the number of ledger rows
  quit
"""
import sqlite3
import sys


def connect(path):
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def body(seq, tag):
    return (f"{tag}:{seq}|" * 40)[: 60 + seq % 300]


def main():
    path, page_size = sys.argv[1], int(sys.argv[2])
    conn = connect(path)
    conn.execute(f"PRAGMA page_size = {page_size}")
    assert conn.execute("PRAGMA journal_mode = wal").fetchone()[0] == "wal"
    conn.execute("CREATE TABLE IF NOT EXISTS ledger (seq INTEGER PRIMARY KEY, tag TEXT, body TEXT)")
    conn.execute("CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, data BLOB)")
    print("ok ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd, args = words[0], words[1:]
        try:
            answer = ""
            if cmd == "insert":
                tag, n = args[0], int(args[1])
                for _ in range(n):
                    seq = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM ledger").fetchone()[0]
                    conn.execute("INSERT INTO ledger VALUES (?, ?, ?)", (seq, tag, body(seq, tag)))
            elif cmd == "blob":
                size = int(args[0])
                conn.execute("INSERT INTO blobs (data) VALUES (?)", (bytes(i % 251 for i in range(size)),))
            elif cmd == "delete-blobs":
                conn.execute("DELETE FROM blobs")
            elif cmd == "checkpoint":
                answer = " ".join(map(str, conn.execute(f"PRAGMA wal_checkpoint({args[0]})").fetchone()))
            elif cmd == "vacuum":
                conn.execute("VACUUM")
            elif cmd == "reopen":
                conn.close()
                conn = connect(path)
            elif cmd == "cold":
                conn.execute("CREATE TABLE cold (x TEXT)")
                conn.execute("INSERT INTO cold VALUES ('written once')")
                answer = str(conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'cold'").fetchone()[0])
            elif cmd == "count":
                answer = str(conn.execute("SELECT count(*) FROM ledger").fetchone()[0])
            elif cmd == "quit":
                break
            else:
                raise ValueError(f"unknown command {cmd}")
            print(f"ok {answer}".rstrip(), flush=True)
        except Exception as e:  # report, keep serving: the test decides
            print(f"error {e}", flush=True)
    conn.close()


if __name__ == "__main__":
    main()
