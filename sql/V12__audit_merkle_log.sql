-- The audit log becomes a verifiable transparency log (docs/audit-log.md): an RFC 9162 Merkle tree
-- per municipality over the existing leaf hashes, signed checkpoints (C2SP tlog-checkpoint in a
-- signed note), the log keys' public halves, registered witnesses and their cosignatures.

-- Hashes of the full subtrees of level >= 1 of each municipality's tree: (level, idx) covers leaves
-- [idx * 2^level, (idx + 1) * 2^level). Level 0 is audit_entries.leaf_hash at seq = idx. Written by
-- the sealer in the transaction that seals the leaves; never changed. Every proof node and every
-- tlog-tiles hash is one of these or a fold of a few of them.
CREATE TABLE audit_tree_nodes (
    municipality_id uuid NOT NULL REFERENCES municipalities (id),
    level           smallint NOT NULL CHECK (level BETWEEN 1 AND 63),
    idx             bigint NOT NULL CHECK (idx >= 0),
    hash            bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (municipality_id, level, idx)
);
CREATE TRIGGER audit_tree_nodes_immutable BEFORE UPDATE OR DELETE ON audit_tree_nodes
    FOR EACH ROW EXECUTE FUNCTION firstkey_forbid_change();

-- Entries sealed before this migration: build their tree once, level by level, exactly as the sealer
-- does (SHA-256(0x01 || left || right)).
DO $$
DECLARE
    lvl integer := 1;
    made bigint;
BEGIN
    INSERT INTO audit_tree_nodes (municipality_id, level, idx, hash)
    SELECT l.municipality_id, 1, l.seq / 2, sha256('\x01'::bytea || l.leaf_hash || r.leaf_hash)
    FROM audit_entries l
    JOIN audit_entries r ON r.municipality_id = l.municipality_id AND r.seq = l.seq + 1
    WHERE l.seq IS NOT NULL AND l.seq % 2 = 0;
    GET DIAGNOSTICS made = ROW_COUNT;
    WHILE made > 0 AND lvl < 63 LOOP
        lvl := lvl + 1;
        INSERT INTO audit_tree_nodes (municipality_id, level, idx, hash)
        SELECT l.municipality_id, lvl, l.idx / 2, sha256('\x01'::bytea || l.hash || r.hash)
        FROM audit_tree_nodes l
        JOIN audit_tree_nodes r
            ON r.municipality_id = l.municipality_id AND r.level = lvl - 1 AND r.idx = l.idx + 1
        WHERE l.level = lvl - 1 AND l.idx % 2 = 0;
        GET DIAGNOSTICS made = ROW_COUNT;
    END LOOP;
END;
$$;

-- A municipality's log identity: the checkpoint origin line and the name of its log keys, fixed when
-- the first log key is made (changing it would make it another log to every witness).
CREATE TABLE audit_logs (
    municipality_id uuid PRIMARY KEY REFERENCES municipalities (id),
    origin          text NOT NULL UNIQUE CHECK (origin ~ '^[^[:space:]+]{1,200}$'),
    created_at      timestamptz NOT NULL
);

-- Public halves of log keys; the private halves are `<key_dir>/log/<municipality>-<key_id>.pk8`.
-- Checkpoints are signed by every key not yet retired (so a rotation overlaps).
CREATE TABLE audit_log_keys (
    municipality_id uuid NOT NULL REFERENCES audit_logs (municipality_id),
    key_id          text NOT NULL CHECK (key_id ~ '^[0-9a-f]{8}$'),
    public_key      bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
    created_at      timestamptz NOT NULL,
    retired_at      timestamptz,
    PRIMARY KEY (municipality_id, key_id)
);

-- V1's checkpoint table was never written; its one-kid-one-signature shape does not fit a signed
-- note (several signatures during a key rotation), so it is replaced by one that keeps the note.
DROP TABLE audit_checkpoints;
CREATE TABLE audit_checkpoints (
    municipality_id uuid NOT NULL REFERENCES municipalities (id),
    tree_size       bigint NOT NULL CHECK (tree_size >= 1),
    root_hash       bytea NOT NULL CHECK (length(root_hash) = 32),
    -- The signed note exactly as the log signed it (body and the log's signature lines).
    note            text NOT NULL,
    signed_at       timestamptz NOT NULL,
    PRIMARY KEY (municipality_id, tree_size)
);
CREATE TRIGGER audit_checkpoints_immutable BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION firstkey_forbid_change();

-- Witnesses whose cosignatures the log accepts and serves (C2SP tlog-cosignature, type 0x04 keys).
CREATE TABLE audit_witnesses (
    municipality_id uuid NOT NULL REFERENCES municipalities (id),
    name            text NOT NULL CHECK (name ~ '^[^[:space:]+]{1,200}$'),
    public_key      bytea NOT NULL CHECK (length(public_key) = 32),
    added_at        timestamptz NOT NULL,
    PRIMARY KEY (municipality_id, name)
);

-- Verified cosignatures, served as extra signature lines of their checkpoint.
CREATE TABLE audit_cosignatures (
    municipality_id uuid NOT NULL,
    tree_size       bigint NOT NULL,
    witness         text NOT NULL,
    line            text NOT NULL,
    cosigned_at     timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    PRIMARY KEY (municipality_id, tree_size, witness),
    FOREIGN KEY (municipality_id, tree_size) REFERENCES audit_checkpoints (municipality_id, tree_size),
    FOREIGN KEY (municipality_id, witness) REFERENCES audit_witnesses (municipality_id, name)
);
CREATE TRIGGER audit_cosignatures_immutable BEFORE UPDATE OR DELETE ON audit_cosignatures
    FOR EACH ROW EXECUTE FUNCTION firstkey_forbid_change();
