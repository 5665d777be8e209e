-- firstkey: a short issuer id per municipality (issue 14): the `iss` of its tokens and the issuer
-- of its trust bundles, instead of the slug (`7` is 2 bytes in a token, `demo-city` 10).
--
-- Locks pin the issuer of their trust bundle, so the move is made by the next bundle the operator
-- signs (`firstkey keys bundle`): it names the short id as issuer and the slug as former issuer
-- (firstkey-token's bundle rename, signed by the root key). `issuer_id_since` is that bundle's
-- version; until it exists tokens keep the slug. A lock gets tokens under the short id once it
-- reported (status `bundle_version`) a bundle at or after that version, or when every bundle of
-- its municipality named the short id (`issuer_id_since` = 1); otherwise under the slug, which
-- the renaming bundle keeps accepting, so no lock refuses a token during the move.
CREATE SEQUENCE municipality_issuer_seq;

ALTER TABLE municipalities ADD COLUMN issuer_id text UNIQUE
    CHECK (issuer_id ~ '^[1-9][0-9]{0,17}$');
-- Existing municipalities get theirs in order of creation.
UPDATE municipalities m SET issuer_id = n.id
    FROM (SELECT id AS mid, nextval('municipality_issuer_seq')::text AS id
          FROM (SELECT id FROM municipalities ORDER BY created_at, id) o) n
    WHERE m.id = n.mid;
ALTER TABLE municipalities ALTER COLUMN issuer_id SET DEFAULT nextval('municipality_issuer_seq')::text;
ALTER TABLE municipalities ALTER COLUMN issuer_id SET NOT NULL;

ALTER TABLE municipalities ADD COLUMN issuer_id_since bigint CHECK (issuer_id_since >= 1);
