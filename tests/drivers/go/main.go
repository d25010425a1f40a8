// Go pgx v4 (Debian's golang-github-jackc-pgx-v4-dev) against pgshard over several shards, with
// the driver's defaults: statements are prepared and cached (Parse/Describe/Sync, then
// Bind/Execute/Sync), batches are sent as one pipeline up to a single Sync, CopyFrom sends binary
// COPY; pgxpool runs queries from several goroutines. Run by tests/drivers_native.rs:
// `pgx-check SETUP.properties`. Every check reads back through the proxy and, where placement
// matters, on the shards directly; the first failed check exits non-zero with its message.
// Success prints "pgx passed".
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgconn"
	"github.com/jackc/pgconn/stmtcache"
	"github.com/jackc/pgtype"
	"github.com/jackc/pgx/v4"
	"github.com/jackc/pgx/v4/pgxpool"
)

type setup struct {
	proxy  string
	shards []int
	urls   map[int]string
	keys   map[int][]int64
}

func readSetup(path string) setup {
	f, err := os.Open(path)
	if err != nil {
		fail("read the setup file: %v", err)
	}
	defer f.Close()
	props := map[string]string{}
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		if name, value, ok := strings.Cut(scanner.Text(), "="); ok {
			props[name] = value
		}
	}
	s := setup{proxy: props["proxy"], urls: map[int]string{}, keys: map[int][]int64{}}
	for _, id := range strings.Split(props["shards"], ",") {
		shard, _ := strconv.Atoi(id)
		s.shards = append(s.shards, shard)
		s.urls[shard] = props["shard."+id+".url"]
		for _, k := range strings.Split(props["shard."+id+".keys"], ",") {
			key, _ := strconv.ParseInt(k, 10, 64)
			s.keys[shard] = append(s.keys[shard], key)
		}
	}
	return s
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "pgx FAILED: "+format+"\n", args...)
	os.Exit(1)
}

var step string

func check(ok bool, format string, args ...interface{}) {
	if !ok {
		fail(step+": check failed: "+format, args...)
	}
}

func must(err error, what string) {
	if err != nil {
		fail("%s: %s: %v", step, what, err)
	}
}

func checkEqual(got, want interface{}, what string) {
	check(reflect.DeepEqual(got, want), "%s: got %v, want %v", what, got, want)
}

func sqlstate(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func expectCode(err error, code, what string) {
	check(err != nil, "%s: succeeded, want SQLSTATE %s", what, code)
	check(sqlstate(err) == code, "%s: got %v, want SQLSTATE %s", what, err, code)
}

type suite struct {
	ctx    context.Context
	setup  setup
	conn   *pgx.Conn
	direct map[int]*pgx.Conn
}

func (s *suite) key(shard, n int) int64 { return s.setup.keys[shard][n] }

// bounds returns the lowest and highest key of this suite.
func (s *suite) bounds() (int64, int64) {
	lo, hi := s.key(s.setup.shards[0], 0), s.key(s.setup.shards[0], 0)
	for _, keys := range s.setup.keys {
		for _, k := range keys {
			if k < lo {
				lo = k
			}
			if k > hi {
				hi = k
			}
		}
	}
	return lo, hi
}

// where returns {shard: name} for every shard holding key, read directly.
func (s *suite) where(key int64) map[int]string {
	found := map[int]string{}
	for _, shard := range s.setup.shards {
		var name string
		err := s.direct[shard].QueryRow(s.ctx, "SELECT name FROM users WHERE user_id = $1", key).Scan(&name)
		if err == nil {
			found[shard] = name
		} else if !errors.Is(err, pgx.ErrNoRows) {
			must(err, "direct read of a shard")
		}
	}
	return found
}

func (s *suite) expectOnItsShard(key int64, shard int, name string) {
	checkEqual(s.where(key), map[int]string{shard: name}, fmt.Sprintf("shards holding key %d", key))
}

func (s *suite) expectAbsent(key int64) {
	checkEqual(s.where(key), map[int]string{}, fmt.Sprintf("shards holding key %d", key))
}

func (s *suite) nameThroughProxy(key int64) string {
	var name string
	must(s.conn.QueryRow(s.ctx, "SELECT name FROM users WHERE user_id = $1", key).Scan(&name),
		fmt.Sprintf("keyed read of %d", key))
	return name
}

const insertUser = "INSERT INTO users (user_id, name) VALUES ($1, $2)"

// keyedAndKeyless: Exec per key on every shard, QueryRow keyed, Query keyless (count, ORDER BY …
// LIMIT), keyless Exec UPDATE with parameters.
func (s *suite) keyedAndKeyless() {
	var inserted []int64
	for _, shard := range s.setup.shards {
		for n := 0; n < 3; n++ {
			k := s.key(shard, n)
			tag, err := s.conn.Exec(s.ctx, insertUser, k, fmt.Sprintf("go-%d", k))
			must(err, "Exec INSERT")
			checkEqual(tag.RowsAffected(), int64(1), "rows inserted")
			inserted = append(inserted, k)
		}
	}
	for _, shard := range s.setup.shards {
		k := s.key(shard, 2)
		checkEqual(s.nameThroughProxy(k), fmt.Sprintf("go-%d", k), "QueryRow keyed")
		s.expectOnItsShard(k, shard, fmt.Sprintf("go-%d", k))
	}
	sort.Slice(inserted, func(i, j int) bool { return inserted[i] < inserted[j] })
	lo, hi := inserted[0], inserted[len(inserted)-1]
	var count int64
	must(s.conn.QueryRow(s.ctx, "SELECT count(*) FROM users WHERE user_id BETWEEN $1 AND $2 AND name LIKE $3",
		lo, hi, "go-%").Scan(&count), "keyless count")
	checkEqual(count, int64(len(inserted)), "keyless count")
	rows, err := s.conn.Query(s.ctx,
		"SELECT user_id FROM users WHERE user_id BETWEEN $1 AND $2 AND name LIKE $3 ORDER BY user_id DESC LIMIT $4",
		lo, hi, "go-%", 5)
	must(err, "keyless Query")
	var top []int64
	for rows.Next() {
		var k int64
		must(rows.Scan(&k), "scan")
		top = append(top, k)
	}
	must(rows.Err(), "keyless Query rows")
	want := []int64{}
	for i := len(inserted) - 1; i >= len(inserted)-5; i-- {
		want = append(want, inserted[i])
	}
	checkEqual(top, want, "keyless ORDER BY … LIMIT")
	tag, err := s.conn.Exec(s.ctx, "UPDATE users SET email = $1 WHERE user_id BETWEEN $2 AND $3 AND name LIKE $4",
		"go@example.org", lo, hi, "go-%")
	must(err, "keyless Exec UPDATE")
	checkEqual(tag.RowsAffected(), int64(len(inserted)), "rows of the keyless UPDATE")
	for _, shard := range s.setup.shards {
		var n int64
		must(s.direct[shard].QueryRow(s.ctx, "SELECT count(*) FROM users WHERE user_id BETWEEN $1 AND $2 AND email = $3",
			lo, hi, "go@example.org").Scan(&n), "direct count")
		checkEqual(n, int64(3), fmt.Sprintf("rows the keyless UPDATE changed on shard %d", shard))
	}
}

// intervalsAndBytea: keyless reads ordered by an interval and by a bytea, and min/max of an
// interval, over keyedAndKeyless's rows on every shard (pgx reads them in binary): intervals
// merge by span, a month counting 30 days, and bytea bytewise, as one Postgres orders them.
func (s *suite) intervalsAndBytea() {
	var keys []int64
	for _, shard := range s.setup.shards {
		for n := 0; n < 3; n++ {
			keys = append(keys, s.key(shard, n))
		}
	}
	lo, hi := s.bounds()
	// make_interval(months => k % 3, days => k % 40): its span in days, ties broken by key.
	span := func(k int64) int64 { return (k%3)*30 + k%40 }
	byInterval := append([]int64(nil), keys...)
	sort.Slice(byInterval, func(i, j int) bool {
		a, b := span(byInterval[i]), span(byInterval[j])
		if a != b {
			return a > b
		}
		return byInterval[i] < byInterval[j]
	})
	rows, err := s.conn.Query(s.ctx, `SELECT user_id, make_interval(months => (user_id % 3)::int, days => (user_id % 40)::int) AS iv
		FROM users WHERE user_id BETWEEN $1 AND $2 AND name LIKE $3 ORDER BY iv DESC, user_id LIMIT 5`, lo, hi, "go-%")
	must(err, "keyless ORDER BY interval")
	var got []int64
	for rows.Next() {
		var k int64
		var iv pgtype.Interval
		must(rows.Scan(&k, &iv), "scan")
		check(iv.Months == int32(k%3) && iv.Days == int32(k%40) && iv.Microseconds == 0, "interval of %d: %+v", k, iv)
		got = append(got, k)
	}
	must(rows.Err(), "keyless ORDER BY interval rows")
	checkEqual(got, byInterval[:5], "keys of the keyless ORDER BY interval DESC, user_id LIMIT 5")

	// make_interval(days => k % 13, hours => k % 5): hours below a day, so equal spans are equal.
	hours := func(k int64) int64 { return (k%13)*24 + k%5 }
	minK, maxK := keys[0], keys[0]
	for _, k := range keys {
		if hours(k) < hours(minK) {
			minK = k
		}
		if hours(k) > hours(maxK) {
			maxK = k
		}
	}
	var least, most pgtype.Interval
	must(s.conn.QueryRow(s.ctx, `SELECT min(iv), max(iv) FROM (SELECT make_interval(days => (user_id % 13)::int, hours => (user_id % 5)::int) AS iv
		FROM users WHERE user_id BETWEEN $1 AND $2 AND name LIKE $3) t`, lo, hi, "go-%").Scan(&least, &most), "keyless min/max of an interval")
	checkEqual([]int64{int64(least.Days)*24 + least.Microseconds/3_600_000_000, int64(most.Days)*24 + most.Microseconds/3_600_000_000},
		[]int64{hours(minK), hours(maxK)}, "keyless min/max of an interval, in hours")

	byBytes := append([]int64(nil), keys...)
	sort.Slice(byBytes, func(i, j int) bool { return byBytes[i] > byBytes[j] })
	rows, err = s.conn.Query(s.ctx, `SELECT int8send(user_id) AS b FROM users WHERE user_id BETWEEN $1 AND $2 AND name LIKE $3
		ORDER BY b DESC LIMIT 3`, lo, hi, "go-%")
	must(err, "keyless ORDER BY bytea")
	got = nil
	for rows.Next() {
		var b []byte
		must(rows.Scan(&b), "scan")
		check(len(b) == 8, "int8send gave %d bytes", len(b))
		got = append(got, int64(binary.BigEndian.Uint64(b)))
	}
	must(rows.Err(), "keyless ORDER BY bytea rows")
	checkEqual(got, byBytes[:3], "keys of the keyless ORDER BY bytea DESC LIMIT 3")
}

// batchOutsideTransaction: one SendBatch with inserts on every shard and reads, one implicit
// transaction; then a batch whose last insert fails leaves nothing behind.
func (s *suite) batchOutsideTransaction() {
	batch := &pgx.Batch{}
	for _, shard := range s.setup.shards {
		k := s.key(shard, 3)
		batch.Queue(insertUser, k, fmt.Sprintf("batch-%d", k))
	}
	for _, shard := range s.setup.shards {
		batch.Queue("SELECT name FROM users WHERE user_id = $1", s.key(shard, 3))
	}
	lo, hi := s.bounds()
	batch.Queue("UPDATE users SET email = $1 WHERE user_id BETWEEN $2 AND $3 AND name LIKE $4",
		"batch@example.org", lo, hi, "batch-%")
	results := s.conn.SendBatch(s.ctx, batch)
	for range s.setup.shards {
		tag, err := results.Exec()
		must(err, "batched INSERT")
		checkEqual(tag.RowsAffected(), int64(1), "rows of a batched INSERT")
	}
	for _, shard := range s.setup.shards {
		var name string
		must(results.QueryRow().Scan(&name), "batched SELECT")
		checkEqual(name, fmt.Sprintf("batch-%d", s.key(shard, 3)), "batched SELECT")
	}
	tag, err := results.Exec()
	must(err, "batched keyless UPDATE")
	checkEqual(tag.RowsAffected(), int64(len(s.setup.shards)), "rows of the batched keyless UPDATE")
	must(results.Close(), "closing the batch")
	for _, shard := range s.setup.shards {
		s.expectOnItsShard(s.key(shard, 3), shard, fmt.Sprintf("batch-%d", s.key(shard, 3)))
		var email string
		must(s.direct[shard].QueryRow(s.ctx, "SELECT email FROM users WHERE user_id = $1", s.key(shard, 3)).Scan(&email),
			"direct read of the updated row")
		checkEqual(email, "batch@example.org", "email set by the batched keyless UPDATE")
	}

	failing := &pgx.Batch{}
	for _, shard := range s.setup.shards {
		failing.Queue(insertUser, s.key(shard, 4), "rolled back")
	}
	failing.Queue(insertUser, s.key(s.setup.shards[0], 3), "duplicate")
	results = s.conn.SendBatch(s.ctx, failing)
	var batchErr error
	for i := 0; i <= len(s.setup.shards) && batchErr == nil; i++ {
		_, batchErr = results.Exec()
	}
	closeErr := results.Close()
	if batchErr == nil {
		batchErr = closeErr
	}
	expectCode(batchErr, "23505", "batch ending in a duplicate key")
	for _, shard := range s.setup.shards {
		s.expectAbsent(s.key(shard, 4))
	}
	checkEqual(s.nameThroughProxy(s.key(s.setup.shards[0], 3)), fmt.Sprintf("batch-%d", s.key(s.setup.shards[0], 3)),
		"read after the failed batch")
}

// batchInTransaction: SendBatch over every shard inside BEGIN … COMMIT, and inside a block that is
// rolled back.
func (s *suite) batchInTransaction() {
	for _, commit := range []bool{true, false} {
		n := 5
		if !commit {
			n = 6
		}
		tx, err := s.conn.Begin(s.ctx)
		must(err, "Begin")
		batch := &pgx.Batch{}
		for _, shard := range s.setup.shards {
			batch.Queue(insertUser, s.key(shard, n), fmt.Sprintf("txbatch-%d", s.key(shard, n)))
		}
		lo, hi := s.bounds()
		batch.Queue("SELECT count(*) FROM users WHERE name LIKE $1 AND user_id BETWEEN $2 AND $3", "txbatch-%", lo, hi)
		results := tx.SendBatch(s.ctx, batch)
		for range s.setup.shards {
			_, err := results.Exec()
			must(err, "batched INSERT in a block")
		}
		var count int64
		must(results.QueryRow().Scan(&count), "batched keyless count in a block")
		must(results.Close(), "closing the batch")
		if commit {
			checkEqual(count, int64(len(s.setup.shards)), "keyless count of the block's own writes")
			must(tx.Commit(s.ctx), "Commit")
			for _, shard := range s.setup.shards {
				s.expectOnItsShard(s.key(shard, n), shard, fmt.Sprintf("txbatch-%d", s.key(shard, n)))
			}
		} else {
			checkEqual(count, int64(2*len(s.setup.shards)), "keyless count of the block's own writes")
			must(tx.Rollback(s.ctx), "Rollback")
			for _, shard := range s.setup.shards {
				s.expectAbsent(s.key(shard, n))
			}
		}
	}
}

// copyFrom: CopyFrom (binary COPY) of rows for every shard into the sharded table.
func (s *suite) copyFrom() {
	var rows [][]interface{}
	for _, shard := range s.setup.shards {
		for n := 7; n < 9; n++ {
			k := s.key(shard, n)
			rows = append(rows, []interface{}{k, fmt.Sprintf("copy-%d", k)})
		}
	}
	copied, err := s.conn.CopyFrom(s.ctx, pgx.Identifier{"users"}, []string{"user_id", "name"}, pgx.CopyFromRows(rows))
	must(err, "CopyFrom")
	checkEqual(copied, int64(len(rows)), "rows CopyFrom reports")
	for _, shard := range s.setup.shards {
		for n := 7; n < 9; n++ {
			k := s.key(shard, n)
			s.expectOnItsShard(k, shard, fmt.Sprintf("copy-%d", k))
		}
	}
	checkEqual(s.nameThroughProxy(s.key(s.setup.shards[1], 8)), fmt.Sprintf("copy-%d", s.key(s.setup.shards[1], 8)),
		"read of a copied row")

	// CopyFrom inside a block that is rolled back leaves nothing.
	rows = nil
	for _, shard := range s.setup.shards {
		rows = append(rows, []interface{}{s.key(shard, 11), "copy rolled back"})
	}
	tx, err := s.conn.Begin(s.ctx)
	must(err, "Begin")
	copied, err = tx.CopyFrom(s.ctx, pgx.Identifier{"users"}, []string{"user_id", "name"}, pgx.CopyFromRows(rows))
	must(err, "CopyFrom in a block")
	checkEqual(copied, int64(len(rows)), "rows CopyFrom reports in a block")
	var count int64
	lo, hi := s.bounds()
	must(tx.QueryRow(s.ctx, "SELECT count(*) FROM users WHERE user_id BETWEEN $1 AND $2 AND name = $3",
		lo, hi, "copy rolled back").Scan(&count), "keyless count in the block")
	checkEqual(count, int64(len(rows)), "the block sees its copied rows")
	must(tx.Rollback(s.ctx), "Rollback")
	for _, shard := range s.setup.shards {
		s.expectAbsent(s.key(shard, 11))
	}
}

// transactions: a block over two shards committed; a block with an error rolled back, the
// connection still usable.
func (s *suite) transactions() {
	a, b := s.setup.shards[0], s.setup.shards[1]
	tx, err := s.conn.Begin(s.ctx)
	must(err, "Begin")
	_, err = tx.Exec(s.ctx, insertUser, s.key(a, 9), "tx-a")
	must(err, "INSERT on the first shard")
	_, err = tx.Exec(s.ctx, insertUser, s.key(b, 9), "tx-b")
	must(err, "INSERT on the second shard")
	must(tx.Commit(s.ctx), "Commit")
	s.expectOnItsShard(s.key(a, 9), a, "tx-a")
	s.expectOnItsShard(s.key(b, 9), b, "tx-b")

	tx, err = s.conn.Begin(s.ctx)
	must(err, "Begin")
	_, err = tx.Exec(s.ctx, insertUser, s.key(a, 10), "doomed")
	must(err, "INSERT on the first shard")
	_, err = tx.Exec(s.ctx, insertUser, s.key(b, 9), "duplicate")
	expectCode(err, "23505", "duplicate key in a block")
	_, err = tx.Exec(s.ctx, "SELECT 1")
	expectCode(err, "25P02", "statement after the error in the block")
	must(tx.Rollback(s.ctx), "Rollback")
	s.expectAbsent(s.key(a, 10))
	var one int
	must(s.conn.QueryRow(s.ctx, "SELECT $1::int", 1).Scan(&one), "query after Rollback")
	checkEqual(one, 1, "query after Rollback")
}

// errorAndRecovery: errors outside a block, then the same connection goes on.
func (s *suite) errorAndRecovery() {
	shard := s.setup.shards[2]
	k := s.key(shard, 0)
	_, err := s.conn.Exec(s.ctx, insertUser, k, "duplicate")
	expectCode(err, "23505", "duplicate key")
	_, err = s.conn.Exec(s.ctx, "SELECT nosuchcolumn FROM users WHERE user_id = $1", k)
	expectCode(err, "42703", "unknown column")
	checkEqual(s.nameThroughProxy(k), fmt.Sprintf("go-%d", k), "read after the errors")
	s.expectOnItsShard(k, shard, fmt.Sprintf("go-%d", k))
}

// pooled: pgxpool with several connections, goroutines running keyed and keyless reads at once.
func (s *suite) pooled() {
	pool, err := pgxpool.Connect(s.ctx, s.setup.proxy+"&pool_max_conns=4")
	must(err, "pgxpool.Connect")
	defer pool.Close()
	lo, hi := s.bounds()
	var want int64
	for _, shard := range s.setup.shards {
		var n int64
		must(s.direct[shard].QueryRow(s.ctx, "SELECT count(*) FROM users WHERE user_id BETWEEN $1 AND $2", lo, hi).Scan(&n),
			"direct count")
		want += n
	}
	errs := make(chan error, 2*len(s.setup.shards))
	for _, shard := range s.setup.shards {
		go func(key int64) {
			var name string
			err := pool.QueryRow(s.ctx, "SELECT name FROM users WHERE user_id = $1", key).Scan(&name)
			if err == nil && name != fmt.Sprintf("go-%d", key) {
				err = fmt.Errorf("pooled keyed read of %d: got %q", key, name)
			}
			errs <- err
		}(s.key(shard, 0))
		go func() {
			var n int64
			err := pool.QueryRow(s.ctx, "SELECT count(*) FROM users WHERE user_id BETWEEN $1 AND $2", lo, hi).Scan(&n)
			if err == nil && n != want {
				err = fmt.Errorf("pooled keyless count: got %d, want %d", n, want)
			}
			errs <- err
		}()
	}
	for i := 0; i < 2*len(s.setup.shards); i++ {
		must(<-errs, "pooled query")
	}
}

// pgx's statement cache evicts its least recently used statement with `deallocate NAME` (a
// simple Query) once it is full, and Conn.Deallocate sends the same: the name is one the proxy
// keeps for the client (Parse), so the proxy must forget it and answer DEALLOCATE, as Postgres
// does. A cache of two statements, keyed reads of ten texts over every shard (evicting on every
// read from the third on), then Prepare / Deallocate / Prepare again under one name.
func (s *suite) statementCacheEvictions() {
	config, err := pgx.ParseConfig(s.setup.proxy)
	must(err, "parse the proxy URL")
	config.BuildStatementCache = func(conn *pgconn.PgConn) stmtcache.Cache {
		return stmtcache.New(conn, stmtcache.ModePrepare, 2)
	}
	c, err := pgx.ConnectConfig(s.ctx, config)
	must(err, "connect with a statement cache of two")
	defer c.Close(s.ctx)
	for round := 0; round < 2; round++ {
		for _, shard := range s.setup.shards {
			k := s.key(shard, 0)
			var name string
			must(c.QueryRow(s.ctx, fmt.Sprintf("SELECT name FROM users WHERE user_id = $1 AND %d = %d", shard, shard), k).Scan(&name),
				fmt.Sprintf("keyed read through a full statement cache (round %d, shard %d)", round, shard))
			checkEqual(name, fmt.Sprintf("go-%d", k), "keyed read through a full statement cache")
		}
	}
	_, err = c.Prepare(s.ctx, "named_read", "SELECT name FROM users WHERE user_id = $1")
	must(err, "Prepare")
	for _, shard := range s.setup.shards {
		var name string
		must(c.QueryRow(s.ctx, "named_read", s.key(shard, 0)).Scan(&name), "read by the prepared name")
		checkEqual(name, fmt.Sprintf("go-%d", s.key(shard, 0)), "read by the prepared name")
	}
	must(c.Deallocate(s.ctx, "named_read"), "Deallocate")
	_, err = c.Prepare(s.ctx, "named_read", "SELECT name || '!' FROM users WHERE user_id = $1")
	must(err, "Prepare again under the deallocated name")
	var name string
	k := s.key(s.setup.shards[1], 0)
	must(c.QueryRow(s.ctx, "named_read", k).Scan(&name), "read by the name prepared again")
	checkEqual(name, fmt.Sprintf("go-%d!", k), "read by the name prepared again")
}

func main() {
	ctx := context.Background()
	st := readSetup(os.Args[1])
	conn, err := pgx.Connect(ctx, st.proxy)
	if err != nil {
		fail("connect to the proxy: %v", err)
	}
	s := &suite{ctx: ctx, setup: st, conn: conn, direct: map[int]*pgx.Conn{}}
	for _, shard := range st.shards {
		c, err := pgx.Connect(ctx, st.urls[shard])
		if err != nil {
			fail("connect to shard %d: %v", shard, err)
		}
		s.direct[shard] = c
	}
	steps := []struct {
		name string
		run  func()
	}{
		{"keyedAndKeyless", s.keyedAndKeyless},
		{"intervalsAndBytea", s.intervalsAndBytea},
		{"batchOutsideTransaction", s.batchOutsideTransaction},
		{"batchInTransaction", s.batchInTransaction},
		{"copyFrom", s.copyFrom},
		{"transactions", s.transactions},
		{"errorAndRecovery", s.errorAndRecovery},
		{"pooled", s.pooled},
		{"statementCacheEvictions", s.statementCacheEvictions},
	}
	for _, st := range steps {
		step = st.name
		st.run()
		fmt.Println("ok", st.name)
	}
	conn.Close(ctx)
	for _, c := range s.direct {
		c.Close(ctx)
	}
	fmt.Println("pgx passed")
}
