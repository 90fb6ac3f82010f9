#![allow(unreachable_pub, clippy::unwrap_used)]

//! GridFS as the services read and write it, against the stack's server.

use media_store::mongodb::bson::{Document, doc};

/// A fresh database of the stack's MongoDB-compatible server.
async fn database(prefix: &str) -> media_store::mongodb::Database {
    let stack = test_kit::Stack::from_env();
    media_store::mongodb::Client::with_uri_str(&stack.mongodb_uri)
        .await
        .unwrap()
        .database(&test_kit::unique_name(prefix).replace('-', "_"))
}

/// The reader asks for no order (a server that sorts cannot answer before it
/// has the whole file); chunks stored out of order still come back whole.
#[tokio::test]
async fn chunks_stored_in_any_order_are_read_back_in_order() {
    let db = database("order").await;
    let bucket = media_store::Bucket::new(&db, "videos");
    let chunk = media_store::gridfs::CHUNK_SIZE as usize;
    let data: Vec<u8> = (0..chunk * 5 + 1000).map(|i| (i * 7 % 251) as u8).collect();
    let pieces: Vec<&[u8]> = data.chunks(chunk).collect();
    for order in [
        vec![0, 1, 2, 3, 4, 5],
        vec![3, 0, 1, 5, 2, 4],
        vec![5, 4, 3, 2, 1, 0],
    ] {
        let mut w = media_store::ChunkWriter::new(&bucket);
        for n in order {
            w.put(n, pieces[n as usize]).await.unwrap();
        }
        w.finish(data.len() as u64, "ordered.bin", doc! {})
            .await
            .unwrap();
        let file = bucket
            .files
            .clone_with_type::<media_store::mongodb::gridfs::FilesCollectionDocument>()
            .find_one(doc! { "_id": w.id() })
            .await
            .unwrap()
            .unwrap();
        for batch in [1, 2, 8] {
            let mut reader = bucket.stream((&file).into(), 0, batch);
            let mut back = Vec::new();
            while let Some(c) = reader.next_chunk().await.unwrap() {
                back.extend_from_slice(&c);
            }
            assert!(back == data, "read back differs (batch {batch})");
        }
        w.abort().await.unwrap();
    }
    let _ = db.drop().await;
}

/// A read asks for no more chunks than the file has left, so a server that
/// scans (FerretDB) stops at the file's last chunk instead of decoding every
/// chunk stored after it; what is read is still the file, whole.
#[tokio::test]
async fn a_read_asks_for_no_more_chunks_than_the_file_has_left() {
    use media_store::mongodb::{
        Client,
        event::{EventHandler, command::CommandEvent},
        options::ClientOptions,
    };
    use std::sync::{Arc, Mutex};

    let stack = test_kit::Stack::from_env();
    let finds = Arc::new(Mutex::new(Vec::<Document>::new()));
    let mut options = ClientOptions::parse(&stack.mongodb_uri).await.unwrap();
    let seen = finds.clone();
    options.command_event_handler = Some(EventHandler::callback(move |ev| {
        if let CommandEvent::Started(s) = ev
            && s.command_name == "find"
            && s.command.get_str("find") == Ok("reads.chunks")
        {
            seen.lock().unwrap().push(s.command);
        }
    }));
    let db = Client::with_options(options)
        .unwrap()
        .database(&test_kit::unique_name("reads").replace('-', "_"));
    let bucket = media_store::Bucket::new(&db, "reads");
    let chunk = media_store::gridfs::CHUNK_SIZE as usize;
    let mut stored = Vec::new();
    // The file read, then another stored after it.
    for len in [chunk * 6 + 100, chunk * 3] {
        let data: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
        let mut w = media_store::ChunkWriter::new(&bucket);
        for (n, piece) in data.chunks(chunk).enumerate() {
            w.put(n as u32, piece).await.unwrap();
        }
        w.finish(len as u64, "read.bin", doc! {}).await.unwrap();
        stored.push((w.id(), data));
    }
    let (id, data) = &stored[0];
    let file = bucket
        .files
        .clone_with_type::<media_store::mongodb::gridfs::FilesCollectionDocument>()
        .find_one(doc! { "_id": id })
        .await
        .unwrap()
        .unwrap();
    let mut reader = bucket.stream((&file).into(), 2, 4);
    let mut back = Vec::new();
    while let Some(c) = reader.next_chunk().await.unwrap() {
        back.extend_from_slice(&c);
    }
    assert!(back == data[chunk * 2..], "read back differs");
    let finds = finds.lock().unwrap().clone();
    assert_eq!(finds.len(), 1, "one query for the file: {finds:?}");
    assert_eq!(finds[0].get_i64("limit"), Ok(5), "{:?}", finds[0]);
    let _ = db.drop().await;
}
