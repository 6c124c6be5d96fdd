-- An ERPNext-shaped ERP schema (MariaDB): the tables and columns Flywheel's
-- erpnext connector reads and its order writer fills. Names follow ERPNext 15 /
-- Frappe (every document is keyed by `name`, child rows point at their
-- document with `parent`, `docstatus` is 0 draft, 1 submitted, 2 cancelled), so
-- the connector file reads the same against a real ERPNext database. Only the
-- columns Flywheel uses are here; a real ERPNext has many more.
--
-- Shop orders carry two custom fields (what "Customize Form" would add):
-- `custom_channel` (the shop) and `custom_shop_order_id`, unique together.

CREATE TABLE `tabSingles` (
    doctype varchar(140) NOT NULL,
    field   varchar(140) NOT NULL,
    value   text,
    KEY singles_doctype_field (doctype, field)
) ENGINE=InnoDB;

CREATE TABLE `tabItem` (
    name          varchar(140) NOT NULL PRIMARY KEY,   -- = item_code
    item_code     varchar(140) NOT NULL UNIQUE,
    item_name     varchar(140),
    item_group    varchar(140) NOT NULL DEFAULT 'Products',
    stock_uom     varchar(140) NOT NULL DEFAULT 'Nos',
    is_stock_item int(1) NOT NULL DEFAULT 1,
    disabled      int(1) NOT NULL DEFAULT 0,
    creation      datetime(6),
    modified      datetime(6)
) ENGINE=InnoDB;

CREATE TABLE `tabWarehouse` (
    name             varchar(140) NOT NULL PRIMARY KEY,   -- '<warehouse_name> - <company abbr>'
    warehouse_name   varchar(140) NOT NULL,
    company          varchar(140),
    parent_warehouse varchar(140),
    is_group         int(1) NOT NULL DEFAULT 0,
    disabled         int(1) NOT NULL DEFAULT 0,
    modified         datetime(6)
) ENGINE=InnoDB;

-- One row per item and warehouse: ERPNext keeps the running quantities here.
CREATE TABLE `tabBin` (
    name          varchar(140) NOT NULL PRIMARY KEY,
    item_code     varchar(140) NOT NULL,
    warehouse     varchar(140) NOT NULL,
    actual_qty    decimal(21,9) NOT NULL DEFAULT 0,
    reserved_qty  decimal(21,9) NOT NULL DEFAULT 0,   -- for submitted, undelivered sales orders
    ordered_qty   decimal(21,9) NOT NULL DEFAULT 0,
    projected_qty decimal(21,9) NOT NULL DEFAULT 0,   -- actual + ordered − reserved
    stock_uom     varchar(140),
    modified      datetime(6),
    UNIQUE KEY bin_item_warehouse (item_code, warehouse),
    KEY bin_warehouse (warehouse)
) ENGINE=InnoDB;

CREATE TABLE `tabPrice List` (
    name            varchar(140) NOT NULL PRIMARY KEY,
    price_list_name varchar(140) NOT NULL,
    currency        varchar(140) NOT NULL,
    enabled         int(1) NOT NULL DEFAULT 1,
    selling         int(1) NOT NULL DEFAULT 1,
    buying          int(1) NOT NULL DEFAULT 0,
    modified        datetime(6)
) ENGINE=InnoDB;

CREATE TABLE `tabItem Price` (
    name            varchar(140) NOT NULL PRIMARY KEY,
    item_code       varchar(140) NOT NULL,
    item_name       varchar(140),
    uom             varchar(140),
    price_list      varchar(140) NOT NULL,
    currency        varchar(140),
    price_list_rate decimal(21,9) NOT NULL DEFAULT 0,
    selling         int(1) NOT NULL DEFAULT 1,
    buying          int(1) NOT NULL DEFAULT 0,
    customer        varchar(140),                        -- a customer-specific price; not a shop price
    valid_from      date,
    valid_upto      date,                                -- inclusive
    modified        datetime(6),
    KEY item_price_item (item_code, price_list),
    KEY item_price_list (price_list)
) ENGINE=InnoDB;

CREATE TABLE `tabCustomer` (
    name           varchar(140) NOT NULL PRIMARY KEY,
    customer_name  varchar(140) NOT NULL,
    customer_type  varchar(140) NOT NULL DEFAULT 'Individual',
    customer_group varchar(140) DEFAULT 'Individual',
    territory      varchar(140) DEFAULT 'All Territories',
    email_id       varchar(140),
    mobile_no      varchar(140),
    disabled       int(1) NOT NULL DEFAULT 0,
    creation       datetime(6),
    modified       datetime(6),
    KEY customer_email (email_id)
) ENGINE=InnoDB;

CREATE TABLE `tabSales Order` (
    name                 varchar(140) NOT NULL PRIMARY KEY,
    naming_series        varchar(140),
    customer             varchar(140) NOT NULL,
    customer_name        varchar(140),
    order_type           varchar(140) NOT NULL DEFAULT 'Sales',
    transaction_date     date,
    delivery_date        date,
    po_no                varchar(140),                   -- the customer's reference: the shop's order name
    currency             varchar(140),
    grand_total          decimal(21,9) NOT NULL DEFAULT 0,
    set_warehouse        varchar(140),
    status               varchar(140) NOT NULL DEFAULT 'Draft',
    docstatus            int(1) NOT NULL DEFAULT 0,
    per_delivered        decimal(21,9) NOT NULL DEFAULT 0,
    address_display      text,
    custom_channel       varchar(140),
    custom_shop_order_id varchar(140),
    creation             datetime(6),
    modified             datetime(6),
    UNIQUE KEY sales_order_shop_order (custom_channel, custom_shop_order_id),
    KEY sales_order_customer (customer)
) ENGINE=InnoDB;

CREATE TABLE `tabSales Order Item` (
    name          varchar(140) NOT NULL PRIMARY KEY,
    parent        varchar(140) NOT NULL,
    parentfield   varchar(140) NOT NULL DEFAULT 'items',
    parenttype    varchar(140) NOT NULL DEFAULT 'Sales Order',
    idx           int NOT NULL DEFAULT 0,
    item_code     varchar(140) NOT NULL,
    item_name     varchar(140),
    qty           decimal(21,9) NOT NULL DEFAULT 0,
    delivered_qty decimal(21,9) NOT NULL DEFAULT 0,
    rate          decimal(21,9) NOT NULL DEFAULT 0,
    amount        decimal(21,9) NOT NULL DEFAULT 0,
    warehouse     varchar(140),
    docstatus     int(1) NOT NULL DEFAULT 0,
    modified      datetime(6),
    KEY sales_order_item_parent (parent),
    KEY sales_order_item_item (item_code, warehouse)
) ENGINE=InnoDB;

CREATE TABLE `tabDelivery Note` (
    name             varchar(140) NOT NULL PRIMARY KEY,
    customer         varchar(140),
    posting_date     date,
    posting_time     time(6),
    status           varchar(140) NOT NULL DEFAULT 'Draft',
    docstatus        int(1) NOT NULL DEFAULT 0,
    transporter_name varchar(140),                       -- the carrier
    lr_no            varchar(140),                       -- the carrier's tracking reference
    lr_date          date,
    modified         datetime(6)
) ENGINE=InnoDB;

CREATE TABLE `tabDelivery Note Item` (
    name                varchar(140) NOT NULL PRIMARY KEY,
    parent              varchar(140) NOT NULL,
    parentfield         varchar(140) NOT NULL DEFAULT 'items',
    parenttype          varchar(140) NOT NULL DEFAULT 'Delivery Note',
    idx                 int NOT NULL DEFAULT 0,
    item_code           varchar(140) NOT NULL,
    qty                 decimal(21,9) NOT NULL DEFAULT 0,
    warehouse           varchar(140),
    against_sales_order varchar(140),
    so_detail           varchar(140),
    docstatus           int(1) NOT NULL DEFAULT 0,
    modified            datetime(6),
    KEY delivery_note_item_parent (parent),
    KEY delivery_note_item_sales_order (against_sales_order)
) ENGINE=InnoDB;
