"""The hand-made mutants of the core: each one breaks one promise in one place.

A mutant is (file, the exact original snippet, its replacement, what the change breaks). The
snippet must occur exactly once in its file: the runner refuses the list otherwise, so an edit
of the core that moves or changes a snippet shows up here instead of silently testing nothing.

``equivalent`` says why a mutant cannot change what any client, database or later request
sees; such a mutant is run and reported, but left out of the score.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository's root
    original: str
    replacement: str
    description: str
    equivalent: str = ""  # why no test can tell it from the original, if it is so


_OWNER = "fastapi_dbpool/_owner.py"
_CONN = "fastapi_dbpool/connection.py"
_SESSION = "fastapi_dbpool/session.py"
_SYNC = "fastapi_dbpool/sync.py"
_SYNC_POOL = "fastapi_dbpool/_sync_pool.py"
_RESTORE = "fastapi_dbpool/_restore.py"
_ERRORS = "fastapi_dbpool/errors.py"
_HOOKS = "fastapi_dbpool/_hooks.py"

MUTANTS: tuple[Mutant, ...] = (
    # --- _owner.py: the claim -----------------------------------------------------------------
    Mutant(
        "owner-claim-never-ends",
        _OWNER,
        "        held.ended = True",
        "        pass",
        "giving a connection back never ends its borrower's claim",
    ),
    Mutant(
        "owner-check-never-refuses",
        _OWNER,
        "        raise ConnectionReleased(_RELEASED)",
        "        return",
        "a statement after the claim ended is let through",
    ),
    Mutant(
        "owner-core-not-exempt",
        _OWNER,
        "    if held is not None and held.ended and not _in_core.get():",
        "    if held is not None and held.ended:",
        "the package's own rollback/restore after the claim ended is refused too",
    ),
    Mutant(
        "owner-core-leaks",
        _OWNER,
        "        _in_core.reset(self._token)",
        "        pass",
        "core() stays on in the context after its block: the borrower's later statements pass",
    ),
    # --- connection.py: PooledConnection ------------------------------------------------------
    Mutant(
        "conn-wait-unchecked",
        _CONN,
        "        check(self)  # under the connection's lock",
        "        pass  # under the connection's lock",
        "PooledConnection.wait skips check(): statements run after the connection went back",
    ),
    Mutant(
        "conn-commit-let-through",
        _CONN,
        '            raise TransactionRefused(_REFUSED.format(what="commit"))',
        "            pass",
        "conn.commit() inside get_conn's transaction commits early instead of being refused",
    ),
    Mutant(
        "conn-rollback-let-through",
        _CONN,
        '            raise TransactionRefused(_REFUSED.format(what="rollback"))',
        "            pass",
        "conn.rollback() inside get_conn's transaction is let through",
    ),
    Mutant(
        "conn-autocommit-let-through",
        _CONN,
        "        if value and self.owner is not None:",
        "        if False:",
        "conn.set_autocommit(True) inside get_conn's transaction is let through",
    ),
    Mutant(
        "conn-first-block-own-transaction",
        _CONN,
        "        outer = await owner.begin()",
        "        outer = None",
        "a first conn.transaction() block is a transaction of its own, committed at its end",
    ),
    Mutant(
        "conn-first-block-error-swallowed",
        _CONN,
        "            if not await owner.abort(outer, exc):\n                raise",
        "            await owner.abort(outer, exc)",
        "an error raised in a first conn.transaction() block is swallowed after the rollback",
    ),
    # --- session.py: Lease, Transaction, Autocommit -----------------------------------------
    Mutant(
        "session-exit-unshielded",
        _SESSION,
        "        with CancelScope(shield=True), core():\n            if lease.users == 1:  # the",
        "        with CancelScope(shield=False), core():\n            if lease.users == 1:  # the",
        "the session's exit (rollback, restore, return) is not shielded from cancellation",
    ),
    Mutant(
        "session-claim-kept",
        _SESSION,
        "            if lease.users == 1:  # the request is done with it: nothing of it runs any "
        "more\n                lease.end_claim()",
        "            pass",
        "the session's exit keeps the request's claim: a released lease stays usable",
    ),
    Mutant(
        "session-share-no-lease",
        _SESSION,
        "        if lease is not None:\n            return lease\n    conn, token",
        "        pass\n    conn, token",
        "a request's second session on a pool checks out a second connection",
    ),
    Mutant(
        "session-commit-skipped",
        _SESSION,
        "        elif status != _IDLE:  # IDLE: no statement ran, nothing to commit\n"
        "            await conn.commit()",
        "        elif status != _IDLE:  # IDLE: no statement ran, nothing to commit\n"
        "            pass",
        "the request's transaction is never committed (rolled back on return)",
    ),
    Mutant(
        "session-first-block-commit-skipped",
        _SESSION,
        "        if tx is not None:\n            await tx.__aexit__(None, None, None)",
        "        if tx is not None:\n            pass",
        "a request whose transaction a first conn.transaction() block began is never committed",
    ),
    Mutant(
        "session-failed-commit-is-200",
        _SESSION,
        "        raise answer from exc",
        "        pass",
        "a COMMIT that raised is swallowed: the client gets 200",
    ),
    Mutant(
        "session-healer-not-told",
        _SESSION,
        "            database.healer.lost_connection()",
        "            pass",
        "a COMMIT whose outcome is unknown (connection lost) is not told to the healer",
    ),
    Mutant(
        "session-caught-sql-error-committed",
        _SESSION,
        "    if status == _INERROR:\n        failed = caught_sql_error()",
        "    if False:\n        failed = caught_sql_error()",
        "an endpoint that caught an SQL error and returned: COMMIT of the aborted transaction",
    ),
    Mutant(
        "session-lost-before-commit-not-503",
        _SESSION,
        "    if conn.broken or conn.closed:\n        # Lost under",
        "    if False:\n        # Lost under",
        "a connection lost under an endpoint that swallowed the error is committed anyway",
    ),
    Mutant(
        "session-cancel-commits",
        _SESSION,
        "            if exc is not None:\n                await _rollback(lease, exc)",
        "            if isinstance(exc, Exception):\n                await _rollback(lease, exc)",
        "a cancelled request (CancelledError, not an Exception) is committed, not rolled back",
    ),
    Mutant(
        "session-error-not-rolled-back",
        _SESSION,
        "                await _rollback(lease, exc)\n                answer_for(",
        "                answer_for(",
        "the session does not roll back a raising endpoint's transaction itself",
    ),
    Mutant(
        "session-error-not-answered",
        _SESSION,
        "                answer_for(self.database, exc, lease.conn)\n                return",
        "                return",
        "pool and connection errors of a transaction are not turned into 503/504",
    ),
    Mutant(
        "session-joined-options-allowed",
        _SESSION,
        "            if self.options or self.context:\n"
        "                await self._give_up(lease, UsageError(_JOINED_WITH_OPTIONS))",
        "            pass",
        "get_conn_with after a plain get_conn joins its transaction without its options",
    ),
    Mutant(
        "session-joining-options-allowed",
        _SESSION,
        "            if lease.options:\n",
        "            if False:\n",
        "a plain get_conn after get_conn_with runs under the other's options",
    ),
    Mutant(
        "session-options-not-marked",
        _SESSION,
        "        lease.options = bool(self.options or self.context)",
        "        lease.options = False",
        "a transaction with options is not marked as such: others may join it",
    ),
    Mutant(
        "session-rls-bypass-allowed",
        _SESSION,
        "    if bypasses:\n",
        "    if False:\n",
        "a row-level security context is served as a BYPASSRLS role",
    ),
    Mutant(
        "session-enter-failure-keeps-connection",
        _SESSION,
        "        except BaseException as exc:\n            await self._give_up(lease, exc)\n"
        "        lease.transactional = True",
        "        except BaseException:\n            raise\n        lease.transactional = True",
        "a transaction refused at its start (RLS bypass, options) never gives its connection back",
    ),
    Mutant(
        "session-give-up-no-leave",
        _SESSION,
        "                lease.end_claim()\n            await _leave(lease)",
        "                lease.end_claim()",
        "_give_up (a refused start) does not leave the lease: the connection stays lent",
    ),
    Mutant(
        "session-write-block-stays-transactional",
        _SESSION,
        "            if self.reads_after and lease.users > 1:",
        "            if False:",
        "a write block inside a read block leaves the shared connection out of autocommit",
    ),
    Mutant(
        "session-write-block-in-autocommit",
        _SESSION,
        "            if reads_after:\n                await switch_autocommit(conn, False)",
        "            pass",
        "a write block inside a read block runs in autocommit: its rollback undoes nothing",
    ),
    Mutant(
        "session-read-not-autocommit",
        _SESSION,
        "                await switch_autocommit(conn, True)\n"
        "            except BaseException as exc:",
        "                pass\n            except BaseException as exc:",
        "a read session (get_read_conn) runs in a transaction instead of autocommit",
    ),
    Mutant(
        "session-read-open-transaction-200",
        _SESSION,
        "            await _rollback_quietly(conn)\n            raise CommitFailed()",
        "            await _rollback_quietly(conn)",
        "a read session that left a BEGIN open answers 200 (its writes vanish)",
    ),
    Mutant(
        "session-leave-never-returns",
        _SESSION,
        "        await database.release(conn, lease.token)",
        "        pass",
        "the last session of a request never gives its connection back",
    ),
    Mutant(
        "session-leave-no-restore",
        _SESSION,
        "            await database.restore(conn)",
        "            pass",
        "what the endpoint set on the connection object is not put back",
    ),
    Mutant(
        "session-leave-no-rollback",
        _SESSION,
        "            if conn.pgconn.transaction_status != _IDLE:\n"
        "                await _rollback_quietly(conn)\n            await database.restore(conn)",
        "            await database.restore(conn)",
        "a connection is given back without rolling back what is still open on it",
    ),
    Mutant(
        "session-owner-kept",
        _SESSION,
        "    if isinstance(conn, PooledConnection):\n        conn.owner = None",
        "    pass",
        "the connection keeps its request owner after the transaction ended",
    ),
    # --- sync.py and _sync_pool.py: def endpoints ---------------------------------------------
    Mutant(
        "sync-claim-kept",
        _SYNC,
        "        release(conn.claim)\n        conn.claim = None",
        "        conn.claim = None",
        "a def endpoint's claim is not ended: its thread writes after the request ended",
    ),
    Mutant(
        "sync-exit-unshielded",
        _SYNC,
        "with CancelScope(shield=True), core():  # a cancelled request still rolls back",
        "with CancelScope(shield=False), core():  # a cancelled request still rolls back",
        "the sync session's exit is not shielded from cancellation",
    ),
    Mutant(
        "sync-running-statement-not-cancelled",
        _SYNC,
        "                if conn.lock.locked():",
        "                if False:",
        "a cancelled def endpoint's running statement is waited for instead of cancelled",
    ),
    Mutant(
        "sync-commit-skipped",
        _SYNC,
        "        elif status != _IDLE:  # IDLE: no statement ran, nothing to commit\n"
        "            conn.commit()",
        "        elif status != _IDLE:  # IDLE: no statement ran, nothing to commit\n"
        "            pass",
        "a def endpoint's transaction is never committed",
    ),
    Mutant(
        "sync-failed-commit-is-200",
        _SYNC,
        "        if failure is not None:\n            _answer_commit_failure(pool, conn, failure)",
        "        pass",
        "a def endpoint whose COMMIT failed answers 200",
    ),
    Mutant(
        "sync-cancel-commits",
        _SYNC,
        "        if exc is not None:\n            _rollback(conn, outer, exc)",
        "        if isinstance(exc, Exception):\n            _rollback(conn, outer, exc)",
        "a cancelled def request is committed, not rolled back",
    ),
    Mutant(
        "sync-error-not-rolled-back",
        _SYNC,
        "            _rollback(conn, outer, exc)\n            return None",
        "            return None",
        "the def session does not roll back a raising endpoint's transaction itself",
    ),
    Mutant(
        "sync-caught-sql-error-committed",
        _SYNC,
        "    if status == _INERROR:\n        failed = caught_sql_error()",
        "    if False:\n        failed = caught_sql_error()",
        "a def endpoint that caught an SQL error and returned answers 200",
    ),
    Mutant(
        "sync-lost-before-commit-not-503",
        _SYNC,
        "    if conn.broken or conn.closed:\n        # Lost under",
        "    if False:\n        # Lost under",
        "a def endpoint whose connection was lost before the commit is not answered 503",
    ),
    Mutant(
        "sync-commit-let-through",
        _SYNC_POOL,
        '            raise TransactionRefused(_REFUSED.format(what="commit"))',
        "            pass",
        "conn.commit() inside get_sync_conn's transaction is let through",
    ),
    Mutant(
        "sync-autocommit-let-through",
        _SYNC_POOL,
        "        if value and self.owned:",
        "        if False:",
        "conn.autocommit = True inside get_sync_conn's transaction is let through",
    ),
    Mutant(
        "sync-wait-unchecked",
        _SYNC_POOL,
        "        check(self)  # under the connection's lock",
        "        pass  # under the connection's lock",
        "SyncConnection.wait skips check()",
    ),
    Mutant(
        "sync-first-block-own-transaction",
        _SYNC_POOL,
        "        first = self.owned and self.outer is None and",
        "        first = False and self.outer is None and",
        "a def endpoint's first conn.transaction() block commits on its own",
    ),
    Mutant(
        "sync-first-block-error-swallowed",
        _SYNC_POOL,
        "            if not outer.__exit__(type(exc), exc, exc.__traceback__):\n"
        "                raise",
        "            outer.__exit__(type(exc), exc, exc.__traceback__)",
        "an error raised in a def endpoint's first conn.transaction() block is swallowed",
    ),
    Mutant(
        "sync-checkout-cancel-leaks",
        _SYNC_POOL,
        "            handover.abandon()\n            self._gate.release()",
        "            self._gate.release()",
        "a sync checkout cancelled mid-way never returns the connection its thread gets",
    ),
    Mutant(
        "sync-give-back-no-restore",
        _SYNC_POOL,
        "                if baseline is not None:\n                    baseline.restore_sync(conn)",
        "                if baseline is not None:\n                    pass",
        "a def endpoint's changes to the connection object are not put back",
    ),
    # --- restore.py: Baseline -----------------------------------------------------------------
    Mutant(
        "restore-no-autocommit",
        _RESTORE,
        "            await switch_autocommit(conn, self.autocommit)",
        "            pass",
        "autocommit is not put back (a read request leaves it on for the next borrower)",
    ),
    Mutant(
        "restore-no-isolation",
        _RESTORE,
        "            await conn.set_isolation_level(self.isolation_level)",
        "            pass",
        "a route's isolation level stays on the connection",
    ),
    Mutant(
        "restore-no-read-only",
        _RESTORE,
        "            await conn.set_read_only(self.read_only)",
        "            pass",
        "a read-only route's read_only stays on the connection",
    ),
    Mutant(
        "restore-no-row-factory",
        _RESTORE,
        "            conn.row_factory = row_factory",
        "            pass",
        "row_factory is not put back",
    ),
    Mutant(
        "restore-no-cursor-factory",
        _RESTORE,
        "            conn.cursor_factory = cursor_factory",
        "            pass",
        "cursor_factory is not put back",
    ),
    Mutant(
        "restore-no-prepare-threshold",
        _RESTORE,
        "            conn.prepare_threshold = threshold",
        "            pass",
        "prepare_threshold is not put back",
    ),
    Mutant(
        "restore-no-adapters",
        _RESTORE,
        "        if _changed(conn, self.adapters):\n"
        "            _lend_adapters(conn, self.adapters)",
        "        pass",
        "a loader or dumper the endpoint registered stays for the next request",
    ),
    Mutant(
        "restore-no-handlers",
        _RESTORE,
        "        if _handler_counts(conn) != self.handlers:",
        "        if False:",
        "a notice handler the endpoint added stays for the next request",
    ),
    # --- errors.py: the answers ---------------------------------------------------------------
    Mutant(
        "errors-any-operational-error-503",
        _ERRORS,
        "    if isinstance(exc, psycopg.OperationalError) and (conn is None or conn.broken or "
        "conn.closed):",
        "    if isinstance(exc, psycopg.OperationalError):",
        "any OperationalError (a serialization failure on a live connection) answers 503",
    ),
    Mutant(
        "errors-statement-timeout-500",
        _ERRORS,
        "    if isinstance(exc, pg_errors.QueryCanceled):\n        return QueryTimeout()",
        "    pass",
        "a statement_timeout answers 500 instead of 504",
    ),
    Mutant(
        "errors-lock-timeout-not-504",
        _ERRORS,
        "    if isinstance(exc, pg_errors.LockNotAvailable):\n        return LockTimeout()",
        "    pass",
        "a lock_timeout answers a plain 500 instead of 504",
    ),
    Mutant(
        "errors-read-only-unexplained",
        _ERRORS,
        "    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):\n"
        "        return ReadOnlyViolation()",
        "    pass",
        "a write in a read-only route is a bare 500, not ReadOnlyViolation",
    ),
    Mutant(
        "errors-lost-commit-retryable",
        _ERRORS,
        "    if gone and not exc.sqlstate:",
        "    if False:",
        "a COMMIT lost with no answer is a 503 with Retry-After (a blind retry may write twice)",
    ),
    Mutant(
        "errors-failed-commit-passes",
        _ERRORS,
        "    if translated is exc:\n        logger.warning(\n            \"commit failed",
        "    if False:\n        logger.warning(\n            \"commit failed",
        "a failed COMMIT's own error passes instead of CommitFailed",
    ),
    Mutant(
        "errors-no-retry-after",
        _ERRORS,
        '            headers={"Retry-After": str(retry_after)},',
        "            headers={},",
        "503 without Retry-After",
    ),
    # --- hooks.py: bounded hooks --------------------------------------------------------------
    Mutant(
        "hooks-no-timeout",
        _HOOKS,
        "        return await asyncio.wait_for(work, settings.hook_timeout)",
        "        return await work",
        "a hook or provider that never returns holds the pool (no DBPOOL_HOOK_TIMEOUT)",
    ),
    Mutant(
        "hooks-configure-not-committed",
        _HOOKS,
        "        if status == TransactionStatus.INTRANS:\n            await conn.commit()",
        "        if False:\n            pass",
        "what a configure hook left in a transaction is not committed",
    ),
    Mutant(
        "hooks-failed-transaction-accepted",
        _HOOKS,
        "            raise psycopg.ProgrammingError(\"it left the connection in a failed "
        'transaction")',
        "            pass",
        "a hook that leaves the connection in a failed transaction is accepted",
    ),
    Mutant(
        "hooks-sync-provider-on-loop",
        _HOOKS,
        "            value = await _bounded(database, asyncio.to_thread(provider))",
        "            value = provider()",
        "a sync password provider runs on the event loop (and unbounded)",
    ),
    # --- added with the deadline on every face, the pool's check and the connection class -------
    Mutant(
        "deadline-never-cuts",
        "fastapi_dbpool/_deadline.py",
        "                cut.add(conn)\n",
        "                continue\n",
        "a statement waiting on a frozen path past DBPOOL_DEADLINE is never cut (any face)",
    ),
    Mutant(
        "pool-check-as-borrower",
        "fastapi_dbpool/database.py",
        "        with core():  # the pool's check at checkout",
        "        if True:  # the pool's check at checkout",
        "the pool's check runs as the borrower: a loop's ended claim throws good connections away",
    ),
    Mutant(
        "conn-class-not-kept",
        _CONN,
        "            conn.__class__ = cls\n",
        "            pass\n",
        "a wrapped connect() (OpenTelemetry) makes psycopg's class: the package's rules go",
    ),
    Mutant(
        "sync-handover-leaks",
        "fastapi_dbpool/_sync_pool.py",
        "        if conn is not None:  # the thread got it, the request never did",
        "        if False:  # the thread got it, the request never did",
        "a def request cancelled as its thread got the connection leaves it lent for good",
    ),
)
