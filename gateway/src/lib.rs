//! Real-time edge: STOMP over WebSocket, SockJS and TCP.
