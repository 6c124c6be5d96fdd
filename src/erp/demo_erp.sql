-- An Odoo-shaped ERP schema: the tables and columns Flywheel's odoo connector reads.
-- Column names follow Odoo 17 so the connector file reads the same against a real Odoo.

CREATE TABLE res_currency (
    id   serial PRIMARY KEY,
    name text NOT NULL UNIQUE          -- ISO 4217 code
);

CREATE TABLE res_partner (
    id           serial PRIMARY KEY,
    name         text NOT NULL,
    email        text,
    phone        text,
    street       text,
    city         text,
    zip          text,
    country_code text,
    write_date   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX res_partner_email ON res_partner (lower(email));

CREATE TABLE product_template (
    id         serial PRIMARY KEY,
    name       text NOT NULL,
    list_price numeric(12,2) NOT NULL DEFAULT 0,
    active     boolean NOT NULL DEFAULT true,
    write_date timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE product_product (
    id              serial PRIMARY KEY,
    product_tmpl_id integer NOT NULL REFERENCES product_template(id),
    default_code    text UNIQUE,       -- the SKU; NULL for products not sold online
    active          boolean NOT NULL DEFAULT true,
    write_date      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX product_product_tmpl ON product_product (product_tmpl_id);

CREATE TABLE stock_location (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    location_id integer REFERENCES stock_location(id),      -- parent
    usage       text NOT NULL CHECK (usage IN ('view','internal','customer','supplier','inventory','transit')),
    parent_path text NOT NULL DEFAULT ''                   -- '1/7/12/': ids from the root, as Odoo keeps it
);
CREATE INDEX stock_location_parent_path ON stock_location (parent_path text_pattern_ops);

CREATE TABLE stock_warehouse (
    id               serial PRIMARY KEY,
    name             text NOT NULL,
    code             text NOT NULL UNIQUE,                 -- short name, used in entity keys
    view_location_id integer NOT NULL REFERENCES stock_location(id),
    lot_stock_id     integer NOT NULL REFERENCES stock_location(id)
);

CREATE TABLE stock_quant (
    id                serial PRIMARY KEY,
    product_id        integer NOT NULL REFERENCES product_product(id),
    location_id       integer NOT NULL REFERENCES stock_location(id),
    quantity          numeric(16,3) NOT NULL DEFAULT 0,
    reserved_quantity numeric(16,3) NOT NULL DEFAULT 0,
    write_date        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stock_quant_product_location ON stock_quant (product_id, location_id);

CREATE TABLE product_pricelist (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    currency_id integer NOT NULL REFERENCES res_currency(id),
    active      boolean NOT NULL DEFAULT true
);

CREATE TABLE product_pricelist_item (
    id              serial PRIMARY KEY,
    pricelist_id    integer NOT NULL REFERENCES product_pricelist(id),
    applied_on      text NOT NULL CHECK (applied_on IN ('0_product_variant','1_product','2_product_category','3_global')),
    product_id      integer REFERENCES product_product(id),
    product_tmpl_id integer REFERENCES product_template(id),
    compute_price   text NOT NULL DEFAULT 'fixed' CHECK (compute_price IN ('fixed','percentage','formula')),
    fixed_price     numeric(12,2),
    min_quantity    numeric(16,3) NOT NULL DEFAULT 0,
    date_start      timestamptz,
    date_end        timestamptz
);
CREATE INDEX product_pricelist_item_product ON product_pricelist_item (product_id);
CREATE INDEX product_pricelist_item_tmpl ON product_pricelist_item (product_tmpl_id);

CREATE TABLE sale_order (
    id               serial PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    partner_id       integer NOT NULL REFERENCES res_partner(id),
    state            text NOT NULL DEFAULT 'draft' CHECK (state IN ('draft','sent','sale','done','cancel')),
    date_order       timestamptz NOT NULL DEFAULT now(),
    currency_id      integer REFERENCES res_currency(id),
    amount_total     numeric(14,2) NOT NULL DEFAULT 0,
    client_order_ref text,
    -- Where an order came from when a shop created it: (channel, shop order id) is unique.
    channel          text,
    shop_order_id    text,
    write_date       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (channel, shop_order_id)
);

CREATE TABLE sale_order_line (
    id              serial PRIMARY KEY,
    order_id        integer NOT NULL REFERENCES sale_order(id) ON DELETE CASCADE,
    product_id      integer NOT NULL REFERENCES product_product(id),
    name            text NOT NULL,
    product_uom_qty numeric(16,3) NOT NULL,
    price_unit      numeric(12,2) NOT NULL,
    qty_delivered   numeric(16,3) NOT NULL DEFAULT 0
);
CREATE INDEX sale_order_line_order ON sale_order_line (order_id);

CREATE TABLE stock_picking (
    id                   serial PRIMARY KEY,
    name                 text NOT NULL,
    sale_id              integer REFERENCES sale_order(id),
    state                text NOT NULL DEFAULT 'draft' CHECK (state IN ('draft','waiting','confirmed','assigned','done','cancel')),
    location_id          integer REFERENCES stock_location(id),
    location_dest_id     integer REFERENCES stock_location(id),
    carrier_name         text,
    carrier_tracking_ref text,
    date_done            timestamptz
);
CREATE INDEX stock_picking_sale ON stock_picking (sale_id);

-- Deletes and key-changing updates of these tables must carry the whole old row,
-- or the connector cannot tell which entity the change belonged to.
ALTER TABLE stock_quant REPLICA IDENTITY FULL;
ALTER TABLE product_product REPLICA IDENTITY FULL;
ALTER TABLE product_pricelist_item REPLICA IDENTITY FULL;
ALTER TABLE stock_location REPLICA IDENTITY FULL;
ALTER TABLE stock_warehouse REPLICA IDENTITY FULL;
ALTER TABLE stock_picking REPLICA IDENTITY FULL;
ALTER TABLE sale_order REPLICA IDENTITY FULL;
