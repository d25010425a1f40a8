# Rails ActiveRecord, as an application uses it by default, through pgshard: a migration (under
# ActiveRecord's advisory lock), CRUD by key, a transaction over two shards, keyless queries,
# insert_all over several shards, savepoints (create_or_find_by, requires_new), optimistic and
# pessimistic locking, find_each / in_batches.
# Usage: ruby orm_rails.rb DATABASE_URL. Prints one line per step; any mismatch aborts with a
# message and a non-zero exit.
require "active_record"

url = ARGV.fetch(0)
ActiveRecord::Base.establish_connection(url)
ActiveRecord::Base.logger = nil
ActiveRecord::Migration.verbose = false

def check(what, got, want)
  return if got == want
  abort "MISMATCH #{what}: got #{got.inspect}, want #{want.inspect}"
end

class CreateRailsOrders < ActiveRecord::Migration[6.1]
  def change
    create_table :rails_orders do |t|
      t.string :customer, null: false
      t.integer :amount, null: false
      t.integer :lock_version, null: false, default: 0
      t.timestamps
    end
  end
end

class RailsOrder < ActiveRecord::Base
end

# The migrator takes pg_try_advisory_lock / pg_advisory_unlock around the migration.
conn = ActiveRecord::Base.connection
migrations = [CreateRailsOrders.new("CreateRailsOrders", 1)]
migrator = ActiveRecord::Migrator.new(:up, migrations, conn.schema_migration, 1)
check("advisory locks enabled", conn.advisory_locks_enabled?, true)
migrator.migrate
check("schema version", conn.schema_migration.all_versions, ["1"])
check("table exists", conn.table_exists?(:rails_orders), true)
puts "migrated"

# CRUD by key: ids come from pgshard's generated keys (INSERT … RETURNING "id").
orders = (1..20).map { |i| RailsOrder.create!(customer: "c#{i % 4}", amount: i) }
check("ids distinct", orders.map(&:id).uniq.size, 20)
found = RailsOrder.find(orders[3].id)
check("find", [found.customer, found.amount], ["c0", 4])
found.update!(amount: 400)
check("update", RailsOrder.find(orders[3].id).amount, 400)
orders[4].destroy!
check("destroy", RailsOrder.where(id: orders[4].id).exists?, false)
puts "crud"

# A transaction over two orders (on two shards when the ids land apart), and one rolled back.
a, b = orders[0], orders[1]
RailsOrder.transaction do
  a.update!(amount: a.amount + 1000)
  b.update!(amount: b.amount + 1000)
end
check("committed", [RailsOrder.find(a.id).amount, RailsOrder.find(b.id).amount], [1001, 1002])
begin
  RailsOrder.transaction do
    a.update!(amount: 0)
    b.update!(amount: 0)
    raise ActiveRecord::Rollback
  end
end
check("rolled back", [RailsOrder.find(a.id).amount, RailsOrder.find(b.id).amount], [1001, 1002])
puts "transactions"

# Keyless: where / order / limit, aggregates.
top = RailsOrder.where(customer: "c1").order(amount: :desc).limit(3).pluck(:amount)
check("keyless order limit", top, [1001, 17, 13])
check("count", RailsOrder.count, 19)
check("sum", RailsOrder.where(customer: "c3").sum(:amount), 3 + 7 + 11 + 15 + 19)
check("pluck ordered", RailsOrder.order(:amount).limit(4).pluck(:amount), [3, 6, 7, 8])
puts "keyless"

# insert_all: INSERT … ON CONFLICT DO NOTHING RETURNING "id" over several shards; the row whose
# id exists already is skipped, the others come back in the order given.
now = Time.now
new_ids = [1_000_003, 2_000_029, 3_000_017, 4_000_037].map { |n| orders[0].id + n }
rows = (new_ids + [orders[0].id]).map do |id|
  { id: id, customer: "bulk", amount: 1, created_at: now, updated_at: now }
end
result = RailsOrder.insert_all(rows)
check("insert_all returning", result.rows.flatten, new_ids)
check("insert_all rows", RailsOrder.where(customer: "bulk").count, 4)
RailsOrder.where(customer: "bulk").delete_all
puts "insert_all"

# Savepoints inside a transaction over several shards: create_or_find_by (its INSERT in a
# savepoint, rolled back to on the duplicate key), transaction(requires_new: true) whose inner
# block fails, and an inner block that commits; the outer transaction keeps exactly what
# Postgres keeps.
c, d, e = orders[6], orders[7], orders[8]
RailsOrder.transaction do
  c.update!(amount: 7000)
  found = RailsOrder.create_or_find_by!(id: d.id) { |o| o.customer = "never"; o.amount = 0 }
  check("create_or_find_by finds", [found.customer, found.amount], [d.customer, d.amount])
  fresh = RailsOrder.create_or_find_by!(id: d.id + 1_000_001) { |o| o.customer = "cofb"; o.amount = 5 }
  check("create_or_find_by creates", fresh.customer, "cofb")
  begin
    RailsOrder.transaction(requires_new: true) do
      e.update!(amount: 9999)
      RailsOrder.create!(id: c.id, customer: "dup", amount: 1)
    end
  rescue ActiveRecord::RecordNotUnique
    nil
  end
  RailsOrder.transaction(requires_new: true) { d.update!(amount: 8000) }
end
check("after savepoints", RailsOrder.where(id: [c.id, d.id, e.id]).order(:id).pluck(:id, :amount).to_h,
      { c.id => 7000, d.id => 8000, e.id => 9 })
check("created in the savepoint", RailsOrder.where(customer: "cofb").count, 1)
RailsOrder.where(customer: "cofb").delete_all
puts "savepoints"

# Optimistic locking (lock_version): a stale copy fails with StaleObjectError and changes nothing.
first = RailsOrder.find(orders[9].id)
stale = RailsOrder.find(orders[9].id)
first.update!(amount: 123)
begin
  stale.update!(amount: 456)
  abort "MISMATCH stale update succeeded"
rescue ActiveRecord::StaleObjectError
  nil
end
check("optimistic lock", RailsOrder.find(orders[9].id).slice(:amount, :lock_version).values, [123, 1])
# Pessimistic locks: lock! and with_lock take FOR UPDATE on the row's shard.
RailsOrder.transaction { RailsOrder.find(orders[10].id).lock!.update!(amount: 11) }
orders[11].with_lock { orders[11].update!(amount: 12) }
check("locks", RailsOrder.where(id: [orders[10].id, orders[11].id]).order(:id).pluck(:amount), [11, 12])
puts "locking"

# Batches in key order over every shard (ORDER BY id LIMIT n, then WHERE id > last).
seen = []
RailsOrder.find_each(batch_size: 3) { |o| seen << o.id }
check("find_each", seen, RailsOrder.order(:id).pluck(:id))
check("in_batches", RailsOrder.in_batches(of: 4).sum { |rel| rel.count }, RailsOrder.count)
puts "batches"
puts "ok"
