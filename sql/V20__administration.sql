-- firstkey: municipal administration (agencies retired, units of an agency, grants made by CAD).

-- An agency is retired, never deleted (incidents, users and grants point at it): a retired agency
-- takes no new invitations or units (incidents are not refused yet).
ALTER TABLE agencies ADD COLUMN retired_at timestamptz;

-- A unit of an agency, e.g. "Engine 7". Its members are the agency's responders whose `users.unit`
-- names it (a grant to a unit resolves them at the time of the grant). Names are unique in the
-- municipality, so `users.unit` = name identifies the unit.
CREATE TABLE units (
    id              uuid NOT NULL,
    municipality_id uuid NOT NULL,
    agency_id       uuid NOT NULL,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    created_at      timestamptz NOT NULL,
    retired_at      timestamptz,
    PRIMARY KEY (id),
    UNIQUE (municipality_id, id),
    UNIQUE (municipality_id, name),
    FOREIGN KEY (municipality_id, agency_id) REFERENCES agencies (municipality_id, id)
);
CREATE INDEX units_agency ON units (municipality_id, agency_id);
CREATE INDEX users_unit ON users (municipality_id, unit) WHERE unit IS NOT NULL;

-- Credentials are referenced per municipality.
ALTER TABLE api_credentials ADD CONSTRAINT api_credentials_tenant UNIQUE (municipality_id, id);

-- A grant a CAD system created, on behalf of the dispatcher it named (`granted_by`).
ALTER TABLE grants ADD COLUMN cad_credential_id uuid;
ALTER TABLE grants ADD CONSTRAINT grants_cad_credential
    FOREIGN KEY (municipality_id, cad_credential_id) REFERENCES api_credentials (municipality_id, id);
