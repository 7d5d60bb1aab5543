//! STOMP 1.0/1.1/1.2 frames: parser, encoder, limits, heart-beats, tokio-util codec.
