// Go database/sql with lib/pq (Debian's golang-github-lib-pq-dev) used as Go applications use it,
// against the database at PGSHARD_URL: unnamed statements (Parse/Describe/Sync, then
// Bind/Execute/Sync), `db.Prepare` named statements, `binary_parameters=yes`, `pq.CopyIn`,
// `pq.Array`, `sql.Tx` with isolation levels and READ ONLY, context cancellation (lib/pq sends a
// CancelRequest), `pq.Listener`, NULLs and the usual types, RETURNING, multi-statement Exec
// strings, errors (*pq.Error Code) and recovery, over a bigint-keyed (lp_account, with
// lp_entry co-located), a text-keyed (lp_sku) and a uuid-keyed (lp_event) table and a reference
// table (lp_country). Every step prints one JSON line, {"step": name, "result": …} or {"step":
// name, "error": SQLSTATE or a description}: tests/drivers_native.rs runs it once through pgshard
// and once against one plain Postgres database (tests/python/probe_diff.py) and compares the two
// outputs line by line. Arguments name the steps to run (`setup` always runs).
package main

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lib/pq"
)

var (
	ctx = context.Background()
	url string
	db  *sql.DB
)

func sqlstate(err error) string {
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		return string(pqErr.Code)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return "ErrNoRows"
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return "context: " + err.Error()
	}
	return "go: " + err.Error()
}

// code is the SQLSTATE of err, or "ok" without one: for steps that expect errors.
func code(err error) string {
	if err == nil {
		return "ok"
	}
	return sqlstate(err)
}

// plain turns a scanned value into something JSON prints the same way for both runs.
func plain(v interface{}) interface{} {
	switch x := v.(type) {
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case []byte:
		return "\\x" + hex.EncodeToString(x)
	case *interface{}:
		return plain(*x)
	}
	return v
}

// rows reads every row of rs as a list of plain values.
func rows(rs *sql.Rows, err error) ([][]interface{}, error) {
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	cols, err := rs.ColumnTypes()
	if err != nil {
		return nil, err
	}
	out := [][]interface{}{}
	for rs.Next() {
		vals := make([]interface{}, len(cols))
		ptrs := make([]interface{}, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rs.Scan(ptrs...); err != nil {
			return nil, err
		}
		row := make([]interface{}, len(cols))
		for i, v := range vals {
			if b, ok := v.([]byte); ok && cols[i].DatabaseTypeName() != "BYTEA" {
				// lib/pq returns text columns it does not parse (numeric, uuid, jsonb, arrays) as bytes.
				row[i] = string(b)
			} else {
				row[i] = plain(v)
			}
		}
		out = append(out, row)
	}
	return out, rs.Err()
}

type querier interface {
	QueryContext(context.Context, string, ...interface{}) (*sql.Rows, error)
	ExecContext(context.Context, string, ...interface{}) (sql.Result, error)
}

func q(on querier, query string, args ...interface{}) ([][]interface{}, error) {
	rs, err := on.QueryContext(ctx, query, args...)
	return rows(rs, err)
}

// affected runs an Exec and answers its row count.
func affected(on querier, query string, args ...interface{}) (int64, error) {
	res, err := on.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func uid(n int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012x", 0x1000+n) }

var t0 = time.Date(2026, 1, 30, 22, 30, 0, 0, time.UTC)

func setup() (interface{}, error) {
	_, err := db.Exec(`
CREATE TABLE lp_country (code text PRIMARY KEY, name text NOT NULL);
CREATE TABLE lp_account (id bigint PRIMARY KEY, name text NOT NULL, country text, balance numeric(12,2),
    opened timestamptz, tags text[], meta jsonb, photo bytea, score double precision, active boolean);
CREATE TABLE lp_entry (account_id bigint NOT NULL, id bigint NOT NULL, amount numeric(10,2) NOT NULL,
    note text, PRIMARY KEY (account_id, id));
CREATE TABLE lp_sku (code text PRIMARY KEY, title text NOT NULL, stock int NOT NULL DEFAULT 0);
CREATE TABLE lp_event (id uuid PRIMARY KEY, account_id bigint, kind text NOT NULL, at timestamptz,
    payload jsonb);
INSERT INTO lp_country VALUES ('fr', 'France'), ('de', 'Germany'), ('jp', 'Japan');`)
	if err != nil {
		return nil, err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	ins, err := tx.Prepare(`INSERT INTO lp_account (id, name, country, balance, opened, tags, meta, photo, score, active)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`)
	if err != nil {
		return nil, err
	}
	countries := []string{"fr", "de", "jp"}
	for i := 1; i <= 24; i++ {
		meta := fmt.Sprintf(`{"level": %d, "vip": %t}`, i, i%2 == 0)
		_, err := ins.Exec(int64(i), fmt.Sprintf("acct%d", i), countries[i%3], fmt.Sprintf("%d.%02d", i*37%500, i),
			t0.Add(time.Duration(i)*7*time.Hour), pq.Array([]string{"t" + fmt.Sprint(i%4), "all"}), meta,
			[]byte{byte(i), 0, 255}, float64(i)/4, i%5 != 0)
		if err != nil {
			return nil, err
		}
	}
	ins.Close()
	entry, err := tx.Prepare("INSERT INTO lp_entry (account_id, id, amount, note) VALUES ($1, $2, $3, $4)")
	if err != nil {
		return nil, err
	}
	for i := 0; i < 60; i++ {
		if _, err := entry.Exec(1+i%24, 100+i, fmt.Sprintf("%d.5", i*13%90), fmt.Sprintf("note %d", i)); err != nil {
			return nil, err
		}
	}
	entry.Close()
	for i, c := range "abcdefghij" {
		if _, err := tx.Exec("INSERT INTO lp_sku (code, title, stock) VALUES ($1, $2, $3)",
			"sku-"+string(c), "title "+string(c), i*3); err != nil {
			return nil, err
		}
	}
	for i := 0; i < 30; i++ {
		if _, err := tx.Exec("INSERT INTO lp_event (id, account_id, kind, at, payload) VALUES ($1, $2, $3, $4, $5)",
			uid(i), 1+i%24, []string{"open", "close", "move"}[i%3], t0.Add(time.Duration(i)*time.Hour),
			fmt.Sprintf(`{"n": %d}`, i)); err != nil {
			return nil, err
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	return q(db, `SELECT (SELECT count(*) FROM lp_account), (SELECT count(*) FROM lp_entry),
        (SELECT count(*) FROM lp_sku), (SELECT count(*) FROM lp_event), (SELECT count(*) FROM lp_country)`)
}

// Unnamed statements: Parse/Describe/Sync, then Bind/Execute/Sync; every column type scanned.
func unnamed_keyed_types() (interface{}, error) {
	var out []interface{}
	for _, id := range []int64{1, 7, 13, 22} {
		var (
			name    string
			balance string
			opened  time.Time
			tags    []string
			meta    []byte
			photo   []byte
			score   float64
			active  bool
			country sql.NullString
		)
		err := db.QueryRowContext(ctx, `SELECT name, balance, opened, tags, meta, photo, score, active, country
            FROM lp_account WHERE id = $1`, id).Scan(&name, &balance, &opened, pq.Array(&tags), &meta, &photo,
			&score, &active, &country)
		if err != nil {
			return nil, err
		}
		out = append(out, []interface{}{name, balance, plain(opened), tags, string(meta), plain(photo), score,
			active, country.String})
	}
	return out, nil
}

func unnamed_uuid_and_text_keys() (interface{}, error) {
	var out []interface{}
	for i := 0; i < 30; i += 7 {
		r, err := q(db, "SELECT id, account_id, kind, at, payload FROM lp_event WHERE id = $1", uid(i))
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	r, err := q(db, "SELECT code, title, stock FROM lp_sku WHERE code = $1", "sku-d")
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	r, err = q(db, "SELECT code, stock FROM lp_sku WHERE code IN ($1, $2, $3) ORDER BY code", "sku-a", "sku-j", "sku-zz")
	if err != nil {
		return nil, err
	}
	return append(out, r), nil
}

func no_rows() (interface{}, error) {
	var name string
	err := db.QueryRowContext(ctx, "SELECT name FROM lp_account WHERE id = $1", 999).Scan(&name)
	err2 := db.QueryRowContext(ctx, "SELECT title FROM lp_sku WHERE code = $1", "none").Scan(&name)
	return []string{code(err), code(err2)}, nil
}

// db.Prepare: a named statement, executed on several keys and several connections.
func named_prepared() (interface{}, error) {
	stmt, err := db.PrepareContext(ctx, "SELECT a.name, c.name, count(e.id), sum(e.amount) FROM lp_account a "+
		"JOIN lp_country c ON c.code = a.country LEFT JOIN lp_entry e ON e.account_id = a.id "+
		"WHERE a.id = $1 GROUP BY a.name, c.name")
	if err != nil {
		return nil, err
	}
	defer stmt.Close()
	var out []interface{}
	for _, id := range []int64{2, 3, 5, 8, 13, 21, 2} {
		r, err := rows(stmt.QueryContext(ctx, id))
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	scatter, err := db.PrepareContext(ctx, "SELECT country, count(*), sum(balance), min(opened), max(score) "+
		"FROM lp_account WHERE balance > $1 GROUP BY country ORDER BY country")
	if err != nil {
		return nil, err
	}
	defer scatter.Close()
	for _, min := range []string{"0", "100.5", "400"} {
		r, err := rows(scatter.QueryContext(ctx, min))
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Named statements returning bytea: lib/pq asks for those columns in binary.
func named_prepared_bytea() (interface{}, error) {
	stmt, err := db.PrepareContext(ctx, "SELECT id, photo, name, photo || '\\x00'::bytea FROM lp_account WHERE id <= $1 ORDER BY id")
	if err != nil {
		return nil, err
	}
	defer stmt.Close()
	return rows(stmt.QueryContext(ctx, 5))
}

func named_prepared_write() (interface{}, error) {
	stmt, err := db.PrepareContext(ctx, "UPDATE lp_sku SET stock = stock + $2 WHERE code = $1 RETURNING code, stock")
	if err != nil {
		return nil, err
	}
	defer stmt.Close()
	var out []interface{}
	for _, c := range []string{"sku-a", "sku-b", "sku-c", "sku-a", "nope"} {
		r, err := rows(stmt.QueryContext(ctx, c, 5))
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func binary_parameters() (interface{}, error) {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	bdb, err := sql.Open("postgres", url+sep+"binary_parameters=yes")
	if err != nil {
		return nil, err
	}
	defer bdb.Close()
	var out []interface{}
	r, err := q(bdb, "SELECT id, name, photo FROM lp_account WHERE id = $1", 4)
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	r, err = q(bdb, "SELECT id FROM lp_account WHERE photo = $1", []byte{9, 0, 255})
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	n, err := affected(bdb, "INSERT INTO lp_account (id, name, photo) VALUES ($1, $2, $3), ($4, $5, $6)",
		101, "bin101", []byte{1, 2, 3}, 102, "bin102", []byte{})
	if err != nil {
		return nil, err
	}
	out = append(out, n)
	r, err = q(bdb, "SELECT id, name, photo, photo IS NULL FROM lp_account WHERE id > $1 ORDER BY id", 100)
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	stmt, err := bdb.PrepareContext(ctx, "SELECT name FROM lp_account WHERE id = $1")
	if err != nil {
		return nil, err
	}
	for _, id := range []int64{101, 102, 3} {
		r, err := rows(stmt.QueryContext(ctx, id))
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	stmt.Close()
	tx, err := bdb.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	n, err = affected(tx, "DELETE FROM lp_account WHERE id IN ($1, $2)", 101, 102)
	if err != nil {
		return nil, err
	}
	out = append(out, n)
	return out, tx.Commit()
}

// copyIn runs pq.CopyIn of `n` rows (`row(i)`) into table's columns in a block it commits: the
// rows COPY reports.
func copyIn(table string, columns []string, n int, row func(i int) []interface{}) (int64, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	stmt, err := tx.Prepare(pq.CopyIn(table, columns...))
	if err != nil {
		return 0, err
	}
	for i := 0; i < n; i++ {
		if _, err := stmt.Exec(row(i)...); err != nil {
			return 0, err
		}
	}
	res, err := stmt.Exec()
	if err != nil {
		return 0, err
	}
	copied, _ := res.RowsAffected()
	if err := stmt.Close(); err != nil {
		return 0, err
	}
	return copied, tx.Commit()
}

func copy_in() (interface{}, error) {
	n, err := copyIn("lp_entry", []string{"account_id", "id", "amount", "note"}, 40, func(i int) []interface{} {
		var note interface{} = fmt.Sprintf("copied\t%d \\ \"q\"\n", i)
		if i%5 == 0 {
			note = nil
		}
		return []interface{}{1 + i%24, 500 + i, fmt.Sprintf("%d.25", i), note}
	})
	if err != nil {
		return nil, err
	}
	r, err := q(db, "SELECT count(*), sum(amount), count(note), max(note) FROM lp_entry WHERE id >= 500")
	return []interface{}{n, r}, err
}

func copy_in_text_and_uuid_keys() (interface{}, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	stmt, err := tx.Prepare(pq.CopyIn("lp_sku", "code", "title", "stock"))
	if err != nil {
		return nil, err
	}
	for i := 0; i < 12; i++ {
		if _, err := stmt.Exec(fmt.Sprintf("copy-%02d", i), fmt.Sprintf("copied ü %d", i), i); err != nil {
			return nil, err
		}
	}
	if _, err := stmt.Exec(); err != nil {
		return nil, err
	}
	stmt.Close()
	stmt, err = tx.Prepare(pq.CopyInSchema("public", "lp_event", "id", "account_id", "kind", "payload"))
	if err != nil {
		return nil, err
	}
	for i := 100; i < 112; i++ {
		if _, err := stmt.Exec(uid(i), i%24+1, "copied", fmt.Sprintf(`{"copy": %d}`, i)); err != nil {
			return nil, err
		}
	}
	if _, err := stmt.Exec(); err != nil {
		return nil, err
	}
	stmt.Close()
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	return q(db, `SELECT (SELECT count(*) FROM lp_sku WHERE code LIKE 'copy-%'), (SELECT sum(stock) FROM lp_sku),
        (SELECT count(*) FROM lp_event WHERE kind = 'copied'), (SELECT sum((payload->>'copy')::int) FROM lp_event)`)
}

// A COPY failing on a duplicate key: the error, and the block is rolled back, the pool goes on.
func copy_in_duplicate() (interface{}, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	stmt, err := tx.Prepare(pq.CopyIn("lp_entry", "account_id", "id", "amount"))
	if err != nil {
		return nil, err
	}
	var errs []string
	for i := 0; i < 5; i++ {
		_, err := stmt.Exec(3, 700+i%3, "1")
		errs = append(errs, code(err))
	}
	_, err = stmt.Exec()
	errs = append(errs, code(err))
	errs = append(errs, code(stmt.Close()))
	errs = append(errs, code(tx.Commit()))
	r, err := q(db, "SELECT count(*) FROM lp_entry WHERE id >= 700")
	return []interface{}{errs, r}, err
}

func arrays() (interface{}, error) {
	var out []interface{}
	r, err := q(db, "SELECT id, name FROM lp_account WHERE id = ANY($1) ORDER BY id", pq.Array([]int64{2, 9, 17, 23, 99}))
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	r, err = q(db, "SELECT code FROM lp_sku WHERE code = ANY($1::text[]) ORDER BY code", pq.Array([]string{"sku-b", "sku-h"}))
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	r, err = q(db, "SELECT id FROM lp_event WHERE id = ANY($1::uuid[]) ORDER BY id", pq.Array([]string{uid(3), uid(4), uid(29)}))
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	var tags pq.StringArray
	var nums pq.Int64Array
	var floats pq.Float64Array
	var bools pq.BoolArray
	err = db.QueryRowContext(ctx, "SELECT tags, ARRAY[id, id * 2], ARRAY[score], ARRAY[active, NULL IS NULL] FROM lp_account WHERE id = $1", 6).
		Scan(&tags, &nums, &floats, &bools)
	if err != nil {
		return nil, err
	}
	out = append(out, []interface{}{[]string(tags), []int64(nums), []float64(floats), []bool(bools)})
	n, err := affected(db, "UPDATE lp_account SET tags = $2 WHERE id = $1", 6, pq.Array([]string{"x", "y z", `q"uote`, "NULL"}))
	if err != nil {
		return nil, err
	}
	r, err = q(db, "SELECT tags, array_length(tags, 1), tags[3] FROM lp_account WHERE id = $1", 6)
	if err != nil {
		return nil, err
	}
	out = append(out, n, r)
	r, err = q(db, "SELECT unnest(tags) AS t, count(*) FROM lp_account GROUP BY t ORDER BY t")
	return append(out, r), err
}

func tx_isolation_read_only() (interface{}, error) {
	var out []interface{}
	for _, opts := range []*sql.TxOptions{
		nil,
		{Isolation: sql.LevelSerializable, ReadOnly: true},
		{Isolation: sql.LevelRepeatableRead, ReadOnly: true},
		{Isolation: sql.LevelReadCommitted},
		{Isolation: sql.LevelRepeatableRead},
		{ReadOnly: true},
	} {
		tx, err := db.BeginTx(ctx, opts)
		if err != nil {
			return nil, err
		}
		r, err := q(tx, "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')")
		if err != nil {
			tx.Rollback()
			return nil, err
		}
		keyed, err := q(tx, "SELECT name FROM lp_account WHERE id = $1", 11)
		if err != nil {
			tx.Rollback()
			return nil, err
		}
		scatter, err := q(tx, "SELECT count(*), sum(balance) FROM lp_account")
		if err != nil {
			tx.Rollback()
			return nil, err
		}
		_, werr := tx.ExecContext(ctx, "UPDATE lp_account SET score = score + 1 WHERE id = $1", 11)
		_, werr2 := tx.ExecContext(ctx, "SELECT 1")
		out = append(out, []interface{}{r, keyed, scatter, code(werr), code(werr2), code(tx.Commit())})
	}
	r, err := q(db, "SELECT score FROM lp_account WHERE id = $1", 11)
	return append(out, r), err
}

// Serializable read-write blocks writing on several shards, committed and rolled back.
func tx_over_shards() (interface{}, error) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable})
	if err != nil {
		return nil, err
	}
	var out []interface{}
	for _, id := range []int64{1, 2, 3, 4, 5, 6} {
		n, err := affected(tx, "UPDATE lp_account SET balance = balance + 1 WHERE id = $1", id)
		if err != nil {
			tx.Rollback()
			return nil, err
		}
		out = append(out, n)
	}
	n, err := affected(tx, "INSERT INTO lp_event (id, account_id, kind) VALUES ($1, 1, 'tx'), ($2, 2, 'tx'), ($3, 3, 'tx')",
		uid(200), uid(201), uid(202))
	if err != nil {
		tx.Rollback()
		return nil, err
	}
	out = append(out, n, code(tx.Commit()))
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	n, err = affected(tx, "DELETE FROM lp_event WHERE kind = $1", "tx")
	out = append(out, n, code(err), code(tx.Rollback()))
	r, err := q(db, "SELECT (SELECT sum(balance) FROM lp_account WHERE id <= 6), (SELECT count(*) FROM lp_event WHERE kind = 'tx')")
	return append(out, r), err
}

// Context cancellation: lib/pq sends a CancelRequest; the statement fails with 57014, lib/pq
// drops that connection, and the pool goes on with another.
func context_cancel() (interface{}, error) {
	var out []string
	for _, query := range []string{
		"SELECT pg_sleep(30)",
		"SELECT pg_sleep(30) FROM lp_account WHERE id = 5",
		"SELECT pg_sleep(30) FROM lp_account WHERE id IN (1, 2, 3, 4)",
	} {
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		started := time.Now()
		_, err := db.ExecContext(cctx, query)
		cancel()
		out = append(out, code(err), fmt.Sprint(time.Since(started) < 10*time.Second))
		var one int
		out = append(out, code(db.QueryRowContext(ctx, "SELECT 1").Scan(&one)))
	}
	// With parameters (extended protocol), and inside a block, which the cancel ends.
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := db.ExecContext(cctx, "SELECT pg_sleep($1)", 30)
	cancel()
	out = append(out, code(err))
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	_, err = tx.ExecContext(ctx, "UPDATE lp_account SET score = 0 WHERE id = $1", 8)
	out = append(out, code(err))
	cctx, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = tx.ExecContext(cctx, "SELECT pg_sleep(30) FROM lp_account WHERE id = $1", 9)
	cancel()
	out = append(out, code(err), code(tx.Rollback()))
	var score float64
	out = append(out, code(db.QueryRowContext(ctx, "SELECT score FROM lp_account WHERE id = $1", 8).Scan(&score)),
		fmt.Sprint(score))
	return out, nil
}

func listen_notify() (interface{}, error) {
	l := pq.NewListener(url, 10*time.Millisecond, time.Second, nil)
	defer l.Close()
	if err := l.Listen("lp_chan"); err != nil {
		return nil, err
	}
	if err := l.Listen("lp_other"); err != nil {
		return nil, err
	}
	var out []interface{}
	out = append(out, code(l.Listen("lp_chan")))
	if _, err := db.ExecContext(ctx, "NOTIFY lp_chan, 'plain'"); err != nil {
		return nil, err
	}
	if _, err := db.ExecContext(ctx, "SELECT pg_notify($1, $2)", "lp_other", "with params"); err != nil {
		return nil, err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	tx.ExecContext(ctx, "UPDATE lp_account SET score = score WHERE id IN (1, 2, 3)")
	tx.ExecContext(ctx, "NOTIFY lp_chan, 'in block 1'")
	tx.ExecContext(ctx, "SELECT pg_notify('lp_chan', $1)", "in block 2")
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	tx.ExecContext(ctx, "NOTIFY lp_chan, 'rolled back'")
	tx.Rollback()
	if _, err := db.ExecContext(ctx, "NOTIFY lp_chan, 'last'"); err != nil {
		return nil, err
	}
	for {
		select {
		case n := <-l.Notify:
			if n == nil {
				out = append(out, "reconnected")
				continue
			}
			out = append(out, []string{n.Channel, n.Extra})
			if n.Extra == "last" {
				return out, l.Unlisten("lp_chan")
			}
		case <-time.After(10 * time.Second):
			out = append(out, "timeout")
			return out, nil
		}
	}
}

func nulls() (interface{}, error) {
	if _, err := db.ExecContext(ctx, "INSERT INTO lp_account (id, name, country, balance, opened, tags, meta, photo, score, active) "+
		"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", 30, "nully", nil, nil, nil, nil, nil, nil, nil, nil); err != nil {
		return nil, err
	}
	var (
		country sql.NullString
		balance sql.NullString
		opened  pq.NullTime
		score   sql.NullFloat64
		active  sql.NullBool
		photo   []byte
		tags    pq.StringArray
	)
	err := db.QueryRowContext(ctx, "SELECT country, balance, opened, score, active, photo, tags FROM lp_account WHERE id = $1", 30).
		Scan(&country, &balance, &opened, &score, &active, &photo, &tags)
	if err != nil {
		return nil, err
	}
	r, err := q(db, "SELECT id, country IS NULL, coalesce(balance, -1) FROM lp_account WHERE balance IS NULL OR id = $1 ORDER BY id", 30)
	if err != nil {
		return nil, err
	}
	r2, err := q(db, "SELECT $1::text IS NULL, $2::int, $3::bytea", nil, nil, nil)
	return []interface{}{country.Valid, balance.Valid, opened.Valid, score.Valid, active.Valid, photo == nil, tags == nil, r, r2}, err
}

func types_scatter() (interface{}, error) {
	var out []interface{}
	r, err := q(db, "SELECT id, balance, opened, meta->'level', meta->>'vip', photo, score FROM lp_account "+
		"WHERE opened > $1 ORDER BY opened DESC LIMIT 5", t0.Add(48*time.Hour))
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	r, err = q(db, "SELECT id, at, payload FROM lp_event WHERE at BETWEEN $1 AND $2 ORDER BY at", t0.Add(3*time.Hour), t0.Add(9*time.Hour))
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	r, err = q(db, "SELECT kind, count(*), min(at), max(id::text), jsonb_agg(payload->'n' ORDER BY at) "+
		"FROM lp_event WHERE account_id IS NOT NULL GROUP BY kind ORDER BY kind")
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	var u string
	var ts time.Time
	var num string
	var raw []byte
	err = db.QueryRowContext(ctx, "SELECT $1::uuid, $2::timestamptz, $3::numeric * 2, $4::jsonb", uid(5), "2026-03-01 12:00:00+02",
		"12345678901234567890.123", `{"a": [1, 2]}`).Scan(&u, &ts, &num, &raw)
	if err != nil {
		return nil, err
	}
	return append(out, []interface{}{u, plain(ts), num, string(raw)}), nil
}

func returning() (interface{}, error) {
	var out []interface{}
	r, err := q(db, "INSERT INTO lp_account (id, name, balance) VALUES ($1, $2, $3), ($4, $5, $6) RETURNING id, name, balance",
		40, "r40", "1.5", 41, "r41", "2.5")
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	r, err = q(db, "UPDATE lp_account SET balance = balance * 2 WHERE id = $1 RETURNING id, balance", 40)
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	r, err = q(db, "UPDATE lp_account SET balance = balance + 1 WHERE id >= $1 RETURNING id, balance", 40)
	if err != nil {
		return nil, err
	}
	sort.Slice(r, func(i, j int) bool { return r[i][0].(int64) < r[j][0].(int64) })
	out = append(out, r)
	r, err = q(db, "INSERT INTO lp_sku (code, title) VALUES ($1, $2) RETURNING code, title, stock", "ret-1", "returned")
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	r, err = q(db, "INSERT INTO lp_sku (code, title, stock) VALUES ($1, $2, 1) ON CONFLICT (code) DO UPDATE SET stock = lp_sku.stock + 10 RETURNING code, stock", "ret-1", "again")
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	r, err = q(db, "DELETE FROM lp_account WHERE id IN ($1, $2) RETURNING id, name", 40, 41)
	if err != nil {
		return nil, err
	}
	sort.Slice(r, func(i, j int) bool { return r[i][0].(int64) < r[j][0].(int64) })
	out = append(out, r)
	var id string
	err = db.QueryRowContext(ctx, "INSERT INTO lp_event (id, account_id, kind) VALUES (gen_random_uuid(), $1, $2) RETURNING kind", 4, "gen").Scan(&id)
	if err != nil {
		return nil, err
	}
	out = append(out, id)
	return append(out, random_uuid_keys()...), nil
}

// gen_random_uuid() as the key: an unnamed statement, a named one executed several times,
// several rows, and the simple protocol; every row gets its own version-4 uuid.
func random_uuid_keys() []interface{} {
	var out []interface{}
	stmt, err := db.PrepareContext(ctx, "INSERT INTO lp_event (id, account_id, kind, at) VALUES (gen_random_uuid(), $1, 'genp', $2) RETURNING account_id")
	if err != nil {
		return append(out, code(err))
	}
	for i := 0; i < 4; i++ {
		r, err := rows(stmt.QueryContext(ctx, 10+i, t0))
		out = append(out, r, code(err))
	}
	stmt.Close()
	n, err := affected(db, "INSERT INTO lp_event (kind, id) VALUES ('genm', gen_random_uuid()), ('genm', pg_catalog.gen_random_uuid()), ($1, gen_random_uuid())", "genm")
	out = append(out, n, code(err))
	n, err = affected(db, "INSERT INTO lp_event (id, kind) VALUES (gen_random_uuid(), 'gens'); INSERT INTO lp_event (id, kind) VALUES (gen_random_uuid(), 'gens')")
	out = append(out, n, code(err))
	_, err = db.ExecContext(ctx, "INSERT INTO lp_event (id, kind, at) VALUES (gen_random_uuid(), $1, 'not a time')", "genbad")
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		out = append(out, string(pqErr.Code), pqErr.Message, pqErr.Position)
	} else {
		out = append(out, code(err))
	}
	r, err := q(db, "SELECT kind, count(DISTINCT id), count(*) FILTER (WHERE substr(id::text, 15, 1) = '4' AND substr(id::text, 20, 1) IN ('8', '9', 'a', 'b')) "+
		"FROM lp_event WHERE kind LIKE 'gen%' GROUP BY kind ORDER BY kind")
	return append(out, r, code(err))
}

// Exec of a string of several statements (the simple protocol: no parameters).
func multi_statement_exec() (interface{}, error) {
	var out []interface{}
	n, err := affected(db, "UPDATE lp_sku SET stock = stock + 1 WHERE code = 'sku-a'; UPDATE lp_sku SET stock = stock + 1; "+
		"INSERT INTO lp_country VALUES ('it', 'Italy')")
	out = append(out, n, code(err))
	n, err = affected(db, "UPDATE lp_sku SET stock = stock - 1 WHERE code LIKE 'sku-%'; DELETE FROM lp_country WHERE code = 'it'")
	out = append(out, n, code(err))
	r, err := q(db, "SELECT count(*) FROM lp_sku; SELECT sum(stock) FROM lp_sku")
	out = append(out, r, code(err))
	n, err = affected(db, "BEGIN; UPDATE lp_account SET score = score + 100 WHERE id = 1; UPDATE lp_account SET score = score + 100 WHERE id = 2; COMMIT")
	out = append(out, n, code(err))
	_, err = db.ExecContext(ctx, "UPDATE lp_account SET score = -1 WHERE id = 3; SELECT 1/0; UPDATE lp_account SET score = -1 WHERE id = 4")
	out = append(out, code(err))
	r, err = q(db, "SELECT id, score FROM lp_account WHERE id <= 4 ORDER BY id")
	return append(out, r), err
}

func errors_and_recovery() (interface{}, error) {
	var out []string
	_, err := db.ExecContext(ctx, "INSERT INTO lp_account (id, name) VALUES ($1, $2)", 1, "dup")
	out = append(out, code(err))
	_, err = db.ExecContext(ctx, "INSERT INTO lp_sku (code, title) VALUES ($1, $2)", "sku-a", "dup")
	out = append(out, code(err))
	_, err = db.ExecContext(ctx, "INSERT INTO lp_event (id, kind) VALUES ($1, $2)", uid(1), "dup")
	out = append(out, code(err))
	_, err = db.ExecContext(ctx, "SELEC 1")
	out = append(out, code(err))
	_, err = db.ExecContext(ctx, "SELECT * FROM lp_missing WHERE id = $1", 1)
	out = append(out, code(err))
	_, err = db.ExecContext(ctx, "SELECT 1 / (id - id) FROM lp_account WHERE id > $1", 0)
	out = append(out, code(err))
	_, err = db.ExecContext(ctx, "SELECT id FROM lp_account WHERE id = $1", "not a number")
	out = append(out, code(err))
	_, err = db.ExecContext(ctx, "INSERT INTO lp_account (id) VALUES ($1)", 77)
	out = append(out, code(err))
	var pqErr *pq.Error
	_, err = db.ExecContext(ctx, "INSERT INTO lp_entry (account_id, id, amount) VALUES ($1, $2, $3)", 1, 100, 1)
	if errors.As(err, &pqErr) {
		out = append(out, string(pqErr.Code), pqErr.Code.Name(), pqErr.Severity, pqErr.Table, pqErr.Constraint)
	} else {
		out = append(out, code(err))
	}
	// In a block: an error aborts it (25P02 after), a savepoint recovers.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	_, err = tx.ExecContext(ctx, "UPDATE lp_account SET score = 42 WHERE id = $1", 10)
	out = append(out, code(err))
	_, err = tx.ExecContext(ctx, "SAVEPOINT s1")
	out = append(out, code(err))
	_, err = tx.ExecContext(ctx, "INSERT INTO lp_account (id, name) VALUES ($1, $2)", 10, "dup")
	out = append(out, code(err))
	_, err = tx.ExecContext(ctx, "SELECT 1")
	out = append(out, code(err))
	_, err = tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT s1")
	out = append(out, code(err))
	_, err = tx.ExecContext(ctx, "UPDATE lp_account SET score = 43 WHERE id = $1", 11)
	out = append(out, code(err), code(tx.Commit()))
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	_, err = tx.ExecContext(ctx, "UPDATE lp_account SET score = 44 WHERE id = $1", 12)
	out = append(out, code(err))
	_, err = tx.ExecContext(ctx, "SELECT 1/0")
	out = append(out, code(err))
	_, err = tx.ExecContext(ctx, "UPDATE lp_account SET score = 45 WHERE id = $1", 13)
	out = append(out, code(err), code(tx.Commit()))
	r, err := q(db, "SELECT id, score FROM lp_account WHERE id BETWEEN 10 AND 13 ORDER BY id")
	return []interface{}{out, r}, err
}

func keyed_and_scatter_writes() (interface{}, error) {
	var out []interface{}
	for _, step := range []struct {
		query string
		args  []interface{}
	}{
		{"UPDATE lp_sku SET title = upper(title) WHERE stock > $1", []interface{}{15}},
		{"UPDATE lp_sku SET stock = $2 WHERE code = $1", []interface{}{"sku-e", 99}},
		{"DELETE FROM lp_sku WHERE code = $1", []interface{}{"sku-f"}},
		{"DELETE FROM lp_event WHERE kind = $1 AND account_id > $2", []interface{}{"move", 20}},
		{"UPDATE lp_event SET payload = payload || $2::jsonb WHERE id = $1", []interface{}{uid(2), `{"touched": true}`}},
		{"UPDATE lp_entry SET note = $1 WHERE account_id = $2", []interface{}{"acct 5", 5}},
		{"INSERT INTO lp_entry (account_id, id, amount) SELECT account_id, id + 1000, amount FROM lp_entry WHERE account_id = $1", []interface{}{7}},
		{"INSERT INTO lp_country (code, name) VALUES ($1, $2)", []interface{}{"es", "Spain"}},
		{"UPDATE lp_country SET name = $2 WHERE code = $1", []interface{}{"es", "España"}},
	} {
		n, err := affected(db, step.query, step.args...)
		out = append(out, []interface{}{n, code(err)})
	}
	r, err := q(db, "SELECT code, title, stock FROM lp_sku ORDER BY code")
	if err != nil {
		return nil, err
	}
	r2, err := q(db, "SELECT kind, count(*) FROM lp_event GROUP BY kind ORDER BY kind")
	if err != nil {
		return nil, err
	}
	r3, err := q(db, "SELECT count(*), sum(amount) FROM lp_entry WHERE account_id IN (5, 7)")
	if err != nil {
		return nil, err
	}
	r4, err := q(db, "SELECT payload FROM lp_event WHERE id = $1", uid(2))
	return append(out, r, r2, r3, r4), err
}

func joins_and_aggregates() (interface{}, error) {
	var out []interface{}
	for _, query := range []string{
		"SELECT c.name, count(*), sum(a.balance), avg(a.score)::numeric(10,4) FROM lp_account a JOIN lp_country c ON c.code = a.country GROUP BY c.name ORDER BY c.name",
		"SELECT a.id, count(e.id), coalesce(sum(e.amount), 0) FROM lp_account a LEFT JOIN lp_entry e ON e.account_id = a.id GROUP BY a.id ORDER BY 3 DESC, 1 LIMIT 5",
		"SELECT a.name, e.id, e.amount FROM lp_account a JOIN lp_entry e ON e.account_id = a.id WHERE a.id = 3 ORDER BY e.id",
		"SELECT kind, count(DISTINCT account_id), string_agg(DISTINCT account_id::text, ',' ORDER BY account_id::text) FROM lp_event GROUP BY kind ORDER BY kind",
		"SELECT id, balance, rank() OVER (ORDER BY balance DESC) FROM lp_account WHERE balance IS NOT NULL ORDER BY 3, 1 LIMIT 6",
		"SELECT count(*) FILTER (WHERE active), count(*) FILTER (WHERE NOT active), bool_and(score > 0), percentile_cont(0.5) WITHIN GROUP (ORDER BY score) FROM lp_account",
		"SELECT DISTINCT country FROM lp_account ORDER BY country NULLS FIRST",
		"SELECT id, name FROM lp_account ORDER BY name DESC OFFSET 3 LIMIT 4",
		"SELECT s.code FROM lp_sku s WHERE EXISTS (SELECT 1 FROM lp_country c WHERE c.code = substr(s.code, 5, 2)) ORDER BY 1",
	} {
		r, err := q(db, query)
		if err != nil {
			out = append(out, code(err))
		} else {
			out = append(out, r)
		}
	}
	return out, nil
}

// ORDER BY a bare name that is an unaliased output column's name (`id::text` is named `id`):
// Postgres sorts by that output column (here text), keyless over every shard.
func order_by_output_names() (interface{}, error) {
	var out []interface{}
	for _, query := range []struct {
		sql  string
		args []interface{}
	}{
		{"SELECT id::text FROM lp_account WHERE id IN (2, 10) ORDER BY id", nil},
		{"SELECT id::text FROM lp_account WHERE id IN (2, 10, 3, 11, 4, 12) ORDER BY id LIMIT 3", nil},
		{"SELECT id::text, name FROM lp_account WHERE id < $1 ORDER BY id DESC", []interface{}{25}},
		{"SELECT balance::text FROM lp_account WHERE balance IS NOT NULL ORDER BY balance LIMIT $1", []interface{}{6}},
		{"SELECT id, opened::date FROM lp_account WHERE opened IS NOT NULL ORDER BY opened, id LIMIT 5", nil},
		{"SELECT CAST(score AS text) FROM lp_account WHERE score IS NOT NULL ORDER BY score LIMIT 5", nil},
	} {
		r, err := q(db, query.sql, query.args...)
		if err != nil {
			out = append(out, code(err))
		} else {
			out = append(out, r)
		}
	}
	return out, nil
}

func big_scatter_and_pool() (interface{}, error) {
	r, err := q(db, "SELECT a.id, g FROM lp_account a, generate_series(1, 200) g WHERE a.id <= $1 ORDER BY a.id, g", 20)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(4)
	defer db.SetMaxOpenConns(0)
	var mu sync.Mutex
	var wg sync.WaitGroup
	names := map[int64]string{}
	var firstErr error
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				id := int64(1 + (g*10+i)%24)
				var name string
				err := db.QueryRowContext(ctx, "SELECT name FROM lp_account WHERE id = $1", id).Scan(&name)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				names[id] = name
				mu.Unlock()
			}
		}(g)
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return []interface{}{len(r), r[len(r)-1], len(names), names[24]}, nil
}

// Session settings on one connection (db.Conn), and empty statements.
func session_settings() (interface{}, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	var out []interface{}
	for _, query := range []string{
		"SET application_name = 'lp probe'",
		"SET TIME ZONE 'Asia/Tokyo'",
		"SET search_path TO public",
		"",
		";",
	} {
		_, err := conn.ExecContext(ctx, query)
		out = append(out, code(err))
	}
	r, err := q(conn, "SELECT current_setting('application_name'), current_setting('TimeZone'), opened::text FROM lp_account WHERE id = $1", 2)
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	r, err = q(conn, "SELECT min(opened)::text FROM lp_account")
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	_, err = conn.ExecContext(ctx, "RESET ALL")
	out = append(out, code(err))
	r, err = q(conn, "SHOW TimeZone")
	return append(out, r), err
}

// A statement prepared before the table changed shape: Postgres re-plans it and fails with 0A000
// when the result's columns changed.
func prepared_after_ddl() (interface{}, error) {
	stmt, err := db.PrepareContext(ctx, "SELECT * FROM lp_country WHERE code = $1")
	if err != nil {
		return nil, err
	}
	defer stmt.Close()
	r1, err := rows(stmt.QueryContext(ctx, "fr"))
	if err != nil {
		return nil, err
	}
	if _, err := db.ExecContext(ctx, "ALTER TABLE lp_country ADD COLUMN region text"); err != nil {
		return nil, err
	}
	_, err = rows(stmt.QueryContext(ctx, "fr"))
	r3, err3 := q(db, "SELECT * FROM lp_country WHERE code = $1", "fr")
	return []interface{}{r1, code(err), r3, code(err3)}, nil
}

// *pq.Error's fields as one Postgres fills them: message, detail, hint, position, table, column,
// constraint; for keyed, keyless and rewritten statements.
func error_fields() (interface{}, error) {
	var out []interface{}
	for _, query := range []struct {
		sql  string
		args []interface{}
	}{
		{"INSERT INTO lp_account (id, name) VALUES ($1, $2)", []interface{}{2, "dup"}},
		{"INSERT INTO lp_account (id, name) VALUES (2, 'dup'), (3, 'dup')", nil},
		{"INSERT INTO lp_sku (code, title, stock) VALUES ($1, $2, $3)", []interface{}{"sku-zz", "t", "many"}},
		{"SELECT nme FROM lp_account WHERE id = $1", []interface{}{1}},
		{"SELECT nme FROM lp_account", nil},
		{"SELECT id FROM lp_account WHERE opened > 'yesterday at noon'", nil},
		{"SELECT id FROM lp_account WHERE id = 1 AND opened > 'never'", nil},
		{"UPDATE lp_sku SET stock = NULL WHERE code = $1", []interface{}{"sku-a"}},
		{"INSERT INTO lp_entry (account_id, id, amount) VALUES ($1, $2, $3)", []interface{}{1, 9999, "12345678901"}},
		{"SELECT * FROM lp_account WHERE id = 1 ORDER BY nosuch", nil},
		{"DELETE FROM lp_country WHERE code = $1", []interface{}{"fr'"}},
		{"SELECT 1 FROM lp_account a JOIN lp_entry e ON e.account_id = a.id WHERE a.id = 1 AND e.amount > 'x'", nil},
		{"INSERT INTO lp_event (id, kind) VALUES ($1, $2)", []interface{}{"not-a-uuid", "x"}},
	} {
		_, err := db.ExecContext(ctx, query.sql, query.args...)
		var pqErr *pq.Error
		if errors.As(err, &pqErr) {
			out = append(out, []string{string(pqErr.Code), pqErr.Message, pqErr.Detail, pqErr.Hint, pqErr.Position,
				pqErr.Table, pqErr.Column, pqErr.Constraint, pqErr.Severity})
		} else {
			out = append(out, code(err))
		}
	}
	return out, nil
}

// Notices (lib/pq's notice handler): one per statement, as one Postgres sends them.
func notices() (interface{}, error) {
	connector, err := pq.NewConnector(url)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var got []string
	ndb := sql.OpenDB(pq.ConnectorWithNoticeHandler(connector, func(n *pq.Error) {
		mu.Lock()
		got = append(got, string(n.Code)+" "+n.Severity+" "+n.Message)
		mu.Unlock()
	}))
	defer ndb.Close()
	ndb.SetMaxOpenConns(1)
	var out []interface{}
	for _, query := range []string{
		"DROP TABLE IF EXISTS lp_never_there",
		"DROP INDEX IF EXISTS lp_never_index",
		"CREATE TABLE IF NOT EXISTS lp_country (code text PRIMARY KEY, name text NOT NULL)",
		"DO $$ BEGIN RAISE NOTICE 'hello from DO'; END $$",
		"SELECT count(*) FROM lp_account",
		"ROLLBACK",
		"COMMIT",
		"SET client_min_messages = warning",
		"DROP TABLE IF EXISTS lp_never_there",
		"RESET client_min_messages",
	} {
		_, err := ndb.ExecContext(ctx, query)
		mu.Lock()
		out = append(out, []interface{}{query, code(err), got})
		got = nil
		mu.Unlock()
	}
	return out, nil
}

// Query of several statements: every result set (rows.NextResultSet), and statements without
// columns.
func result_sets() (interface{}, error) {
	rs, err := db.QueryContext(ctx, "SELECT id FROM lp_account WHERE id < 3 ORDER BY id; SELECT count(*) FROM lp_sku; "+
		"UPDATE lp_sku SET stock = stock WHERE code = 'sku-a'; SELECT code FROM lp_sku ORDER BY code LIMIT 2")
	if err != nil {
		return nil, err
	}
	var sets [][]interface{}
	for {
		var set []interface{}
		for rs.Next() {
			var v interface{}
			if err := rs.Scan(&v); err != nil {
				rs.Close()
				return nil, err
			}
			if b, ok := v.([]byte); ok {
				v = string(b)
			}
			set = append(set, v)
		}
		sets = append(sets, set)
		if !rs.NextResultSet() {
			break
		}
	}
	rs.Close()
	out := []interface{}{sets, code(rs.Err())}
	for _, query := range []string{
		"SELECT FROM lp_account WHERE id = 1",
		"SELECT FROM lp_account WHERE id > 20",
		"SELECT FROM lp_account ORDER BY id LIMIT 3",
	} {
		rs, err := db.QueryContext(ctx, query)
		if err != nil {
			out = append(out, code(err))
			continue
		}
		cols, _ := rs.Columns()
		n := 0
		for rs.Next() {
			n++
		}
		out = append(out, []interface{}{len(cols), n, code(rs.Err())})
		rs.Close()
	}
	var one interface{}
	err = db.QueryRowContext(ctx, "SELECT $1", "untyped").Scan(&one)
	out = append(out, fmt.Sprintf("%s", one), code(err))
	err = db.QueryRowContext(ctx, "SELECT $1::int + 1 FROM lp_account WHERE id = $2", "41", 2).Scan(&one)
	out = append(out, one, code(err))
	return out, nil
}

// Cursors in a block (DECLARE / FETCH / MOVE / CLOSE) and row locks, as Go batch jobs use them.
func cursors_and_locks() (interface{}, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	var out []interface{}
	for _, query := range []string{
		"DECLARE c1 CURSOR FOR SELECT id, name FROM lp_account WHERE id <= 24 ORDER BY id",
		"FETCH 3 FROM c1",
		"MOVE 5 IN c1",
		"FETCH NEXT FROM c1",
		"FETCH 2 FROM c1",
		"CLOSE c1",
		"DECLARE c2 NO SCROLL CURSOR FOR SELECT code FROM lp_sku WHERE code = 'sku-b'",
		"FETCH ALL FROM c2",
		"SELECT id, name FROM lp_account WHERE id = 3 FOR UPDATE",
		"SELECT code FROM lp_sku WHERE stock > 20 ORDER BY code FOR UPDATE",
		"SELECT id FROM lp_account WHERE id IN (1, 2, 3) ORDER BY id LIMIT 2 FOR SHARE SKIP LOCKED",
	} {
		r, err := q(tx, query)
		if err != nil {
			out = append(out, code(err))
		} else {
			out = append(out, r)
		}
	}
	return out, tx.Commit()
}

// TRUNCATE, SET LOCAL, and a read-only block writing a reference table.
func misc_statements() (interface{}, error) {
	var out []interface{}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	_, err = tx.ExecContext(ctx, "SET LOCAL statement_timeout = '5s'")
	out = append(out, code(err))
	r, err := q(tx, "SELECT current_setting('statement_timeout')")
	out = append(out, r, code(err))
	n, err := affected(tx, "TRUNCATE lp_entry")
	out = append(out, n, code(err), code(tx.Rollback()))
	r, err = q(db, "SELECT count(*) > 0, current_setting('statement_timeout') FROM lp_entry")
	out = append(out, r, code(err))
	tx, err = db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	_, err = tx.ExecContext(ctx, "INSERT INTO lp_country VALUES ('xx', 'Nowhere')")
	out = append(out, code(err), code(tx.Rollback()))
	n, err = affected(db, "DELETE FROM lp_country WHERE code = 'xx'")
	return append(out, n, code(err)), nil
}

// COPY that leaves out the key of a uuid-keyed table whose key has a default (one Postgres fills
// it in): a known gap, pgshard refuses it (0A000).
func copy_without_key() (interface{}, error) {
	if _, err := db.ExecContext(ctx, "CREATE TABLE lp_log (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), account_id bigint, line text)"); err != nil {
		return nil, err
	}
	_, err := copyIn("lp_log", []string{"account_id", "line"}, 30, func(i int) []interface{} {
		return []interface{}{i % 24, fmt.Sprintf("line %d", i)}
	})
	if err != nil {
		return nil, err
	}
	return q(db, "SELECT count(*), count(DISTINCT id) FROM lp_log")
}

// A COPY of many rows in lib/pq's 64 kB messages, an empty key array, LISTEN in a rolled-back
// block.
func copy_big_and_edges() (interface{}, error) {
	n, err := copyIn("lp_entry", []string{"account_id", "id", "amount", "note"}, 5000, func(i int) []interface{} {
		return []interface{}{1 + i%24, 20000 + i, fmt.Sprintf("%d.01", i%1000), strings.Repeat("x", i%300)}
	})
	if err != nil {
		return nil, err
	}
	out := []interface{}{n}
	r, err := q(db, "SELECT count(*), sum(amount), sum(length(note)) FROM lp_entry WHERE id >= 20000")
	out = append(out, r, code(err))
	r, err = q(db, "SELECT id FROM lp_account WHERE id = ANY($1)", pq.Array([]int64{}))
	out = append(out, r, code(err))
	r, err = q(db, "SELECT code FROM lp_sku WHERE code = ANY($1) OR code IS NULL", pq.Array([]string{}))
	out = append(out, r, code(err))
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	_, err = tx.ExecContext(ctx, "LISTEN lp_rolled_back")
	out = append(out, code(err))
	r, err = q(tx, "SELECT pg_listening_channels()")
	out = append(out, r, code(err), code(tx.Rollback()))
	return out, nil
}

// Two sessions: session advisory locks with parameters (golang-migrate's pg_advisory_lock($1)),
// transaction-level ones, and FOR UPDATE NOWAIT on a row the other holds (55P03).
func locks_between_sessions() (interface{}, error) {
	c1, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer c1.Close()
	c2, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer c2.Close()
	var out []interface{}
	one := func(c *sql.Conn, query string, args ...interface{}) {
		r, err := q(c, query, args...)
		if err != nil {
			out = append(out, code(err))
		} else {
			out = append(out, r)
		}
	}
	one(c1, "SELECT pg_advisory_lock($1)", 7001)
	one(c2, "SELECT pg_try_advisory_lock($1)", 7001)
	one(c1, "SELECT pg_advisory_unlock($1)", 7001)
	one(c2, "SELECT pg_try_advisory_lock($1)", 7001)
	one(c1, "SELECT pg_try_advisory_lock(7001)")
	one(c2, "SELECT pg_advisory_unlock(7001)")
	one(c1, "SELECT pg_try_advisory_lock(7001)")
	one(c1, "SELECT pg_advisory_unlock_all()")
	t1, err := c1.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	one(c2, "SELECT 1")
	_, err = t1.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", 7002)
	out = append(out, code(err))
	one(c2, "SELECT pg_try_advisory_xact_lock($1)", 7002)
	r, err := q(t1, "SELECT name FROM lp_account WHERE id = $1 FOR UPDATE", 5)
	out = append(out, r, code(err))
	r, err = q(t1, "SELECT code FROM lp_sku WHERE stock > 25 ORDER BY code FOR UPDATE")
	out = append(out, r, code(err))
	t2, err := c2.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	_, err = t2.ExecContext(ctx, "SELECT name FROM lp_account WHERE id = $1 FOR UPDATE NOWAIT", 5)
	out = append(out, code(err), code(t2.Rollback()))
	t2, err = c2.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	_, err = t2.ExecContext(ctx, "SELECT code FROM lp_sku ORDER BY code FOR UPDATE NOWAIT")
	out = append(out, code(err), code(t2.Rollback()))
	r, err = q(c2, "SELECT code FROM lp_sku ORDER BY code FOR UPDATE SKIP LOCKED")
	out = append(out, r, code(err))
	out = append(out, code(t1.Commit()))
	one(c2, "SELECT pg_try_advisory_xact_lock($1)", 7002)
	for _, query := range []string{"DEALLOCATE ALL", "DISCARD ALL", "DISCARD PLANS", "RESET ALL"} {
		_, err := c1.ExecContext(ctx, query)
		out = append(out, code(err))
	}
	one(c1, "SELECT count(*) FROM lp_account WHERE id = $1", 5)
	return out, nil
}

func main() {
	url = os.Getenv("PGSHARD_URL")
	if !strings.Contains(url, "sslmode=") {
		sep := "?"
		if strings.Contains(url, "?") {
			sep = "&"
		}
		url += sep + "sslmode=disable"
	}
	var err error
	db, err = sql.Open("postgres", url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer db.Close()
	steps := []struct {
		name string
		run  func() (interface{}, error)
	}{
		{"setup", setup},
		{"unnamed_keyed_types", unnamed_keyed_types},
		{"unnamed_uuid_and_text_keys", unnamed_uuid_and_text_keys},
		{"no_rows", no_rows},
		{"named_prepared", named_prepared},
		{"named_prepared_bytea", named_prepared_bytea},
		{"named_prepared_write", named_prepared_write},
		{"binary_parameters", binary_parameters},
		{"copy_in", copy_in},
		{"copy_in_text_and_uuid_keys", copy_in_text_and_uuid_keys},
		{"copy_in_duplicate", copy_in_duplicate},
		{"arrays", arrays},
		{"tx_isolation_read_only", tx_isolation_read_only},
		{"tx_over_shards", tx_over_shards},
		{"context_cancel", context_cancel},
		{"listen_notify", listen_notify},
		{"nulls", nulls},
		{"types_scatter", types_scatter},
		{"returning", returning},
		{"multi_statement_exec", multi_statement_exec},
		{"errors_and_recovery", errors_and_recovery},
		{"keyed_and_scatter_writes", keyed_and_scatter_writes},
		{"joins_and_aggregates", joins_and_aggregates},
		{"order_by_output_names", order_by_output_names},
		{"big_scatter_and_pool", big_scatter_and_pool},
		{"session_settings", session_settings},
		{"error_fields", error_fields},
		{"notices", notices},
		{"result_sets", result_sets},
		{"cursors_and_locks", cursors_and_locks},
		{"misc_statements", misc_statements},
		{"copy_without_key", copy_without_key},
		{"copy_big_and_edges", copy_big_and_edges},
		{"locks_between_sessions", locks_between_sessions},
		{"prepared_after_ddl", prepared_after_ddl},
	}
	only := map[string]bool{}
	for _, a := range os.Args[1:] {
		only[a] = true
	}
	for _, s := range steps {
		if len(only) > 0 && !only[s.name] && s.name != "setup" {
			continue
		}
		line := map[string]interface{}{"step": s.name}
		result, err := s.run()
		if err != nil {
			line["error"] = sqlstate(err)
			fmt.Fprintf(os.Stderr, "%s: %v\n", s.name, err)
		} else {
			line["result"] = result
		}
		text, err := json.Marshal(line)
		if err != nil {
			text = []byte(fmt.Sprintf(`{"step": %q, "error": "json: %v"}`, s.name, err))
		}
		fmt.Println(string(text))
	}
}
