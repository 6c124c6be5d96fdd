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
    -- The warehouse it ships from (Odoo's sale_order.warehouse_id); the first one when NULL.
    warehouse_id     integer REFERENCES stock_warehouse(id),
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

-- Reservations, as Odoo makes them when an order is confirmed: each line of a
-- shop order in state 'sale' gets a stock move 'assigned' in its warehouse's
-- Stock and raises that quant's reserved_quantity; a done delivery takes the
-- reserved units out of stock (quantity and reserved_quantity fall together);
-- a cancellation releases them. Orders the ERP made itself (no channel) are
-- left alone, so the seeded history stays as it is.
CREATE TABLE stock_move (
    id              serial PRIMARY KEY,
    sale_line_id    integer NOT NULL REFERENCES sale_order_line(id) ON DELETE CASCADE,
    product_id      integer NOT NULL REFERENCES product_product(id),
    location_id     integer NOT NULL REFERENCES stock_location(id),
    product_uom_qty numeric(16,3) NOT NULL,
    state           text NOT NULL CHECK (state IN ('assigned','done','cancel')),
    picking_id      integer REFERENCES stock_picking(id)
);
CREATE INDEX stock_move_line ON stock_move (sale_line_id);
CREATE INDEX stock_move_assigned ON stock_move (product_id, location_id) WHERE state = 'assigned';

CREATE FUNCTION demo_adjust_quant(p_product integer, p_location integer,
                                  d_quantity numeric, d_reserved numeric) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE stock_quant SET quantity = quantity + d_quantity,
                           reserved_quantity = reserved_quantity + d_reserved,
                           write_date = now()
    WHERE id = (SELECT id FROM stock_quant WHERE product_id = p_product AND location_id = p_location
                ORDER BY id LIMIT 1);
    IF NOT FOUND THEN
        INSERT INTO stock_quant (product_id, location_id, quantity, reserved_quantity)
        VALUES (p_product, p_location, d_quantity, d_reserved);
    END IF;
END $$;

CREATE FUNCTION demo_reserve_order(p_order integer) RETURNS void LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    FOR r IN
        SELECT l.id AS line_id, l.product_id, l.product_uom_qty AS qty,
               coalesce(w.lot_stock_id,
                        (SELECT lot_stock_id FROM stock_warehouse ORDER BY id LIMIT 1)) AS loc
        FROM sale_order_line l
        JOIN sale_order o ON o.id = l.order_id
        LEFT JOIN stock_warehouse w ON w.id = o.warehouse_id
        WHERE l.order_id = p_order AND o.channel IS NOT NULL AND o.state = 'sale'
          AND NOT EXISTS (SELECT 1 FROM stock_move m WHERE m.sale_line_id = l.id)
        -- Quants are locked in one global order (product, location) by every
        -- function here, so a reservation and a delivery never deadlock.
        ORDER BY l.product_id, l.id
    LOOP
        INSERT INTO stock_move (sale_line_id, product_id, location_id, product_uom_qty, state)
        VALUES (r.line_id, r.product_id, r.loc, r.qty, 'assigned');
        PERFORM demo_adjust_quant(r.product_id, r.loc, 0, r.qty);
    END LOOP;
END $$;

-- The order's assigned moves become done (delivered: out of stock) or cancel (released).
CREATE FUNCTION demo_settle_order(p_order integer, p_state text, p_picking integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE m record;
BEGIN
    FOR m IN
        SELECT mv.id, mv.product_id, mv.location_id, mv.product_uom_qty AS qty
        FROM stock_move mv JOIN sale_order_line l ON l.id = mv.sale_line_id
        WHERE l.order_id = p_order AND mv.state = 'assigned'
        ORDER BY mv.product_id, mv.location_id, mv.id
    LOOP
        UPDATE stock_move SET state = p_state, picking_id = p_picking WHERE id = m.id;
        PERFORM demo_adjust_quant(m.product_id, m.location_id,
                                  CASE WHEN p_state = 'done' THEN -m.qty ELSE 0 END, -m.qty);
        IF p_state = 'done' THEN
            UPDATE sale_order_line SET qty_delivered = qty_delivered + m.qty
            WHERE id = (SELECT sale_line_id FROM stock_move WHERE id = m.id);
        END IF;
    END LOOP;
END $$;

CREATE FUNCTION demo_on_order_line() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM demo_reserve_order(NEW.order_id);
    RETURN NULL;
END $$;
CREATE TRIGGER demo_reserve_line AFTER INSERT ON sale_order_line
    FOR EACH ROW EXECUTE FUNCTION demo_on_order_line();

CREATE FUNCTION demo_on_order_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'sale' THEN
        PERFORM demo_reserve_order(NEW.id);
    ELSIF NEW.state = 'cancel' THEN
        PERFORM demo_settle_order(NEW.id, 'cancel', NULL);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER demo_order_state AFTER UPDATE OF state ON sale_order
    FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM OLD.state) EXECUTE FUNCTION demo_on_order_state();

CREATE FUNCTION demo_on_delivery() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM demo_settle_order(NEW.sale_id, 'done', NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER demo_delivery_done AFTER INSERT OR UPDATE OF state ON stock_picking
    FOR EACH ROW WHEN (NEW.state = 'done' AND NEW.sale_id IS NOT NULL)
    EXECUTE FUNCTION demo_on_delivery();

-- Deletes and key-changing updates of these tables must carry the whole old row,
-- or the connector cannot tell which entity the change belonged to.
ALTER TABLE stock_quant REPLICA IDENTITY FULL;
ALTER TABLE product_product REPLICA IDENTITY FULL;
ALTER TABLE product_pricelist_item REPLICA IDENTITY FULL;
ALTER TABLE stock_location REPLICA IDENTITY FULL;
ALTER TABLE stock_warehouse REPLICA IDENTITY FULL;
ALTER TABLE stock_picking REPLICA IDENTITY FULL;
ALTER TABLE sale_order REPLICA IDENTITY FULL;
