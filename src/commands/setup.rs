//! `totes-cdc setup`: checks and prepares the source, idempotently, explaining every problem
//! with its fix. The same steps as plain SQL are in `sql/source/` for DBAs.

use anyhow::Result;

use crate::capture::catalog::TableName;
use crate::capture::{preflight, CaptureError};
use crate::config::SetupArgs;
use crate::pg::ident;

pub async fn run(args: SetupArgs) -> Result<()> {
    let url = super::source_url(&args.source.url, "setup")?;
    let client = url.connect().await?;
    println!("source {}", url.masked());
    preflight::check_wal_level(&client, &url).await?;
    println!("  ok  wal_level = logical");
    preflight::check_replication_role(&client, &url).await?;
    println!("  ok  role {} may use replication", ident(&url.user()));

    let tables = match args.source.tables() {
        Some(t) => t,
        None => {
            let rows = client
                .query(
                    "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
                     ORDER BY 1",
                    &[],
                )
                .await
                .map_err(|e| url.query_error("listing the tables of schema public", e))?;
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .filter(|n| !args.exclude_tables.iter().any(|x| x == n))
                .map(|n| TableName::new("public", &n))
                .collect()
        }
    };
    if tables.is_empty() {
        anyhow::bail!("no tables to replicate: schema public has none; set `tables`");
    }
    preflight::check_tables(&client, &url, &tables).await?;
    println!(
        "  ok  {} tables readable, each with a primary key or replica identity",
        tables.len()
    );

    let publication = &args.source.publication;
    let list = tables
        .iter()
        .map(TableName::quoted)
        .collect::<Vec<_>>()
        .join(", ");
    if !preflight::publication_exists(&client, &url, publication).await? {
        // Partitions publish as their root: one mirror per partitioned table, and partitions
        // attached later publish without changing the publication.
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish_via_partition_root = true)",
            ident(publication)
        );
        client.batch_execute(&sql).await.map_err(|e| {
            anyhow::anyhow!(
                "could not create publication \"{publication}\": {}. Ask the owner of the tables (or a superuser) to run: {sql};",
                e.as_db_error().map_or(e.to_string(), |d| d.message().to_string())
            )
        })?;
        println!("  ok  publication {publication} created for {list}");
    } else {
        match preflight::captured_tables(&client, &url, publication, Some(&tables)).await {
            Ok(_) => println!("  ok  publication {publication} publishes every table"),
            Err(CaptureError::PublicationMissingTables { missing, .. }) => {
                let sql = format!(
                    "ALTER PUBLICATION {} ADD TABLE {missing}",
                    ident(publication)
                );
                client.batch_execute(&sql).await.map_err(|e| {
                    anyhow::anyhow!(
                        "publication \"{publication}\" is missing {missing} and could not be extended: {}. Ask the owner of the publication to run: {sql};",
                        e.as_db_error().map_or(e.to_string(), |d| d.message().to_string())
                    )
                })?;
                println!("  ok  publication {publication} was missing {missing}: added");
            }
            Err(CaptureError::EmptyPublication { .. }) => {
                let sql = format!("ALTER PUBLICATION {} ADD TABLE {list}", ident(publication));
                client.batch_execute(&sql).await?;
                println!("  ok  publication {publication} was empty: added {list}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    match crate::capture::slot::slot_info(&client, &url, &args.source.slot).await? {
        Some(info) => {
            crate::capture::slot::check_slot(&args.source.slot, &info, &url.database())?;
            println!(
                "  ok  slot {} exists (confirmed up to {})",
                args.source.slot,
                info.confirmed_flush_lsn
                    .map(|l| l.to_string())
                    .unwrap_or_default()
            );
        }
        None => println!(
            "  ok  slot {} will be created, with the initial snapshot, when capture first starts",
            args.source.slot
        ),
    }
    println!("source ready");
    if args.warehouse.url.warehouse_url.is_some() || args.warehouse.url.warehouse_url_file.is_some()
    {
        let wh = super::run::prepare_warehouse(
            &url,
            &args.source.publication,
            Some(&tables),
            &args.warehouse,
        )
        .await?;
        println!("warehouse {}", wh.url().masked());
        println!(
            "  ok  schemas totes_cdc and staging, the {} model in schema {}",
            match args.warehouse.model {
                crate::apply::warehouse::Model::Totesys => "totesys star",
                crate::apply::warehouse::Model::None => "(no)",
            },
            args.warehouse.warehouse_schema
        );
        println!("warehouse ready");
    }
    Ok(())
}
